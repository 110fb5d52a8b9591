"""Environment variables into typed Structs, and each bad value into one readable line.

A settings Struct names each field after its variable (`rename="upper"`, or the field's own
`name`); its types carry the constraints (`Meta`). `read_struct` picks the set variables,
turns their text into what msgspec converts (lists split on commas, yes/no as booleans, a
Literal's case, a URL's trailing slash), converts, and explains a failure as
`NAME: what was expected, got 'value'`, the line the CLI prints instead of a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta
from msgspec import inspect as mi

from pacsor.errors import ConfigError

# An AE title: 1 to 16 printable characters, no backslash (PS3.5 §6.2, AE value representation).
AeTitle = Annotated[str, Meta(pattern=r"^[\x20-\x5b\x5d-\x7e]{1,16}$")]
# An allowed caller: an AE title, optionally pinned to an address (AET@host).
CallingAe = Annotated[
    str, Meta(pattern=r"^[\x20-\x3f\x41-\x5b\x5d-\x7e]{1,16}(@[A-Za-z0-9.:_-]{1,253})?$")
]
Port = Annotated[int, Meta(ge=1, le=65535)]
Seconds = Annotated[float, Meta(gt=0)]
_HTTP_URL_PATTERN = r"^https?://[^/\s]+"
HttpUrl = Annotated[str, Meta(pattern=_HTTP_URL_PATTERN)]
CoreName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
InferenceCommand = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]*$")]
NatsUrl = Annotated[str, Meta(pattern=r"^(nats|tls|ws|wss)://[^/\s]+$")]
TimeZone = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_+\-/]{1,64}$")]
# An HL7 application or facility name (HD): no HL7 delimiter, no control character.
Hl7Name = Annotated[str, Meta(pattern=r"^[^|^~\\&\x00-\x1f]{1,180}$")]
# The name of a file in a folder of the operator's: no path, no "..".
FileName = Annotated[str, Meta(pattern=r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# A password, token or key: never shown, never logged; NAME_FILE may name a file holding it
# instead (Docker secrets are files under /run/secrets).
Secret = Annotated[str, Meta(extra={"secret": True})]
FILE_SUFFIX = "_FILE"
MASK = "***"

# What a pattern means, for the one line a person reads.
_PATTERN_HINTS: dict[Any, str] = {
    AeTitle: "an AE title is 1 to 16 printable characters without backslash",
    CallingAe: "expected AET or AET@host, an AE title of 1 to 16 printable characters",
    HttpUrl: "expected an http:// or https:// URL",
    CoreName: "lower-case letters, digits and '-'",
    InferenceCommand: "not an inference command name",
    NatsUrl: "expected nats://host:port",
    TimeZone: "expected a time zone such as Europe/Paris",
    Hl7Name: "HL7 delimiters |^~\\& and control characters are not allowed",
    FileName: "a file name of letters, digits, _ . -",
}
_BOOLEAN_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}

S = TypeVar("S", bound=msgspec.Struct)
# Reads one variable whose text is not a plain value or list: (variable, text) -> raw value.
FieldReader = Callable[[str, str], Any]


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file: KEY=VALUE lines, `#` comments, optional quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}: line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def variables_of(kind: type[msgspec.Struct]) -> dict[str, mi.Field]:
    """The fields of a settings Struct, by variable name."""
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    return {field.encode_name: field for field in info.fields}


def _value_type(field: mi.Field) -> mi.Type:
    """The field's type, without `| None` and without its extra metadata."""
    kind = field.type
    if isinstance(kind, mi.UnionType):
        kind = next(t for t in kind.types if not isinstance(t, mi.NoneType))
    if isinstance(kind, mi.Metadata):
        kind = kind.type
    return kind


def is_secret(field: mi.Field) -> bool:
    return isinstance(field.type, mi.Metadata) and bool((field.type.extra or {}).get("secret"))


def secret_variables(kind: type[msgspec.Struct]) -> frozenset[str]:
    """The variables of `kind` that hold secrets."""
    return frozenset(name for name, field in variables_of(kind).items() if is_secret(field))


def _secret_from_file(env: Mapping[str, str], variable: str) -> str:
    """The value of secret `variable`, from NAME or from the file NAME_FILE names."""
    value = env.get(variable, "").strip()
    path = env.get(variable + FILE_SUFFIX, "").strip()
    if not path:
        return value
    if value:
        raise ConfigError(f"{variable}{FILE_SUFFIX}: {variable} is set too; set one of the two")
    try:
        text = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{variable}{FILE_SUFFIX}: cannot read {path!r}: {err}") from None
    if not text:
        raise ConfigError(f"{variable}{FILE_SUFFIX}: the file {path!r} is empty")
    return text


def mask_url(url: str) -> str:
    """A URL without the password it may carry (`nats://user:pass@host` as `nats://***@host`)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    return f"{scheme}://{MASK}@{authority.rsplit('@', 1)[1]}{slash}{path}"


_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/,'\"]+@", re.IGNORECASE)


def mask_text(text: str) -> str:
    """Free text (a log message, an error) with the passwords of the URLs in it masked."""
    return _URL_CREDENTIALS.sub(rf"\g<1>{MASK}@", text)


def mask_urls(urls: str) -> str:
    """Comma-separated URLs (NATS_URL), each without its password."""
    return ",".join(mask_url(url) for url in urls.split(","))


_SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|SECRET|STORE_KEY", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """A variable whose name says it holds a secret (TOKEN_2, ADMIN_TOKEN, NATS_PASSWORD...)."""
    return bool(_SECRET_WORDS.search(name)) and not name.upper().endswith(FILE_SUFFIX)


def masked(value: Any, name: str = "") -> Any:
    """`value` (builtins: dicts, lists, tuples, strings) with every secret replaced by ***:
    the values of secret-named keys, and the passwords inside URLs."""
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v, name) for v in value]
    if isinstance(value, str) and is_secret_name(name):
        return MASK if value else ""
    if isinstance(value, str) and "://" in value:
        return mask_text(value)
    return value


def _nested_struct(kind: mi.Type) -> mi.StructType | None:
    """The Struct a field holds, alone or as the items of a tuple."""
    if isinstance(kind, mi.VarTupleType | mi.ListType):
        kind = kind.item_type
    return kind if isinstance(kind, mi.StructType) else None


def _text_to_raw(kind: mi.Type, value: str) -> Any:
    if isinstance(kind, mi.VarTupleType | mi.ListType):
        return [_text_to_raw(kind.item_type, item.strip()) for item in value.split(",") if item]
    if isinstance(kind, mi.BoolType):
        return _BOOLEAN_WORDS.get(value.lower(), value)
    if isinstance(kind, mi.LiteralType) and all(
        isinstance(v, str) and v.isupper() for v in kind.values
    ):
        return value.upper()  # LOG_LEVEL=info, HL7_LANGUAGE=fr
    if isinstance(kind, mi.LiteralType) and all(
        isinstance(v, str) and v.islower() for v in kind.values
    ):
        return value.lower()  # LOG_FORMAT=TEXT
    if isinstance(kind, mi.StrType) and kind.pattern == _HTTP_URL_PATTERN:
        return value.rstrip("/")
    return value


def raw_fields(
    env: Mapping[str, str],
    kind: type[msgspec.Struct],
    suffix: str = "",
    readers: Mapping[str, FieldReader] | None = None,
) -> dict[str, Any]:
    """The set variables of `kind` (each named NAME + suffix), ready for `convert`.

    A field holding Structs is read by its entry in `readers`, or left to the caller.
    """
    raw: dict[str, Any] = {}
    for name, field in variables_of(kind).items():
        if is_secret(field):
            value = _secret_from_file(env, name + suffix)
        else:
            value = env.get(name + suffix, "").strip()
        if not value:
            continue
        if readers and name in readers:
            raw[name] = readers[name](name + suffix, value)
        elif _nested_struct(_value_type(field)) is None:
            raw[name] = _text_to_raw(_value_type(field), value)
    return raw


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)


def convert(raw: dict[str, Any], kind: type[S], given: Mapping[str, str], name: str = "") -> S:
    """`raw` as a `kind`; a failure is ConfigError naming the variable (else `name`)."""
    try:
        return msgspec.convert(raw, kind, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as err:
        raise ConfigError(explain(err, kind, given, name or kind.__name__)) from None


def read_struct(env: Mapping[str, str], kind: type[S], suffix: str = "") -> S:
    """The Struct `kind` from the environment's variables (each named NAME + suffix)."""
    return convert(raw_fields(env, kind, suffix), kind, env)


def _variable_at(path: str, kind: type[msgspec.Struct]) -> tuple[str, mi.Field] | None:
    """The variable and field that msgspec's error path points at.

    `$.PORT` is PORT; `$.EXTRA_CORES[0].API_URL` (a tuple of Structs, each read from
    suffixed variables) is API_URL_1.
    """
    parts = re.findall(r"\.([A-Z0-9_]+)(?:\[(\d+)\])?", path)
    fields = variables_of(kind)
    suffix = ""
    for n, (name, index) in enumerate(parts):
        field = fields.get(name)
        if field is None:
            return None
        nested = _nested_struct(_value_type(field))
        if n == len(parts) - 1 or nested is None:
            return name + suffix, field
        suffix = f"_{int(index) + 1}" if index else suffix
        fields = variables_of(nested.cls)
    return None


def explain(
    err: msgspec.ValidationError,
    kind: type[msgspec.Struct],
    given: Mapping[str, str],
    default_name: str,
) -> str:
    """`Expected int >= 1 - at $.EXTRA_CORES[0].PORT` as `PORT_1: expected ..., got '0'`."""
    message, _, where = str(err).rpartition(" - at `")
    path = where.rstrip("`")
    missing = re.match(r"Object missing required field `(\w+)`", message)
    if missing:
        path += "." + missing.group(1)
    found = _variable_at(path, kind)
    name = found[0] if found else default_name
    hint = _hint(message)
    if found and message.startswith("Invalid enum value"):
        choices = _value_type(found[1])
        if isinstance(choices, mi.LiteralType):
            hint = f"expected one of {', '.join(map(str, choices.values))}"
    value = given.get(name)
    if value is not None and found and is_secret(found[1]):
        value = MASK
    elif value is not None:
        value = mask_urls(value)
    got = f", got {value!r}" if value is not None else ""
    return f"{name}: {hint}{got}"


def _hint(message: str) -> str:
    for kind, hint in _PATTERN_HINTS.items():
        pattern = next(m for m in kind.__metadata__ if isinstance(m, Meta)).pattern
        if pattern is not None and repr(pattern) in message:
            return hint
    if message.startswith("Object missing required field"):
        return "not set"
    if message.startswith("Expected `array` of length >= 1"):
        return "at least one value is needed"
    readable = {
        "`int`": "an integer",
        "`float`": "a number",
        "`bool`": "true or false",
        "`str`": "a string",
    }
    for raw, text in readable.items():
        message = message.replace(raw, text)
    message = re.sub(r", got an? [a-z]+$|, got `\w+`$", "", message)
    return message[:1].lower() + message[1:]
