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

# What a pattern means, for the one line a person reads.
_PATTERN_HINTS: dict[Any, str] = {
    AeTitle: "an AE title is 1 to 16 printable characters without backslash",
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
    """The field's type, without `| None`."""
    kind = field.type
    if isinstance(kind, mi.UnionType):
        kind = next(t for t in kind.types if not isinstance(t, mi.NoneType))
    return kind


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
