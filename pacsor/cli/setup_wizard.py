"""`pacsor setup`: the questions asked once per site, written to `env-files/.env.<site>`.

The questions are those of the original gateway's setup dialogs: the product (which sets the
inference commands), the AI environment's URL and token, the PACS that receives results, the
SCP's own AE title and port, study filters, HL7 to the RIS, and a second AI core. Every answer
is checked as it is typed, and each can be given as an option instead (`--token ...`), so the
same command serves an installation script. The file gets `.env` linked to it, which is where
`pacsor` and `docker compose` read a site's settings; it also names itself in PACSOR_ENV_FILE,
so `docker compose --env-file env-files/.env.<site> up -d` hands it to the containers too.

The prompts are questionary's (on prompt_toolkit); the checks are plain functions, tested alone.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pacsor.config import ConfigError, load_settings, read_dotenv

PRODUCTS: dict[str, tuple[str, ...]] = {
    "Milvue Suite": ("smarturgences", "smartxpert"),
    "SmartTrauma": ("detection", "measures"),
    "TechCare Trauma": ("trauma",),
    "SmartChest": ("smartchest",),
}
# Known environments, offered in a list; any other URL can be typed.
ENVIRONMENTS: dict[str, str] = {
    "API simulator of the compose demo (http://simulator:8421)": "http://simulator:8421",
    "API simulator on this machine (http://127.0.0.1:8421)": "http://127.0.0.1:8421",
}
OTHER_URL = "Another URL (type it)"
ENV_DIR = "env-files"
SECRET = re.compile(r"TOKEN|PASSWORD|SECRET")

Validator = Callable[[str], str | None]  # None: the answer is fine; else what is wrong


def check_site(value: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", value):
        return "lower-case letters, digits, '-' and '_', at most 40"
    return None


def check_url(value: str) -> str | None:
    if not re.fullmatch(r"https?://[^/\s:]+(:\d{1,5})?(/\S*)?", value):
        return "expected an http:// or https:// URL"
    return None


def check_port(value: str) -> str | None:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return "a port is a number from 1 to 65535"
    return None


def check_ae_title(value: str) -> str | None:
    if not value.strip():
        return "an AE title cannot be empty"
    if len(value) > 16:
        return f"an AE title has at most 16 characters, this one has {len(value)}"
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "an AE title has no backslash and no control characters"
    return None


def check_host(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", value):
        return "expected a host name or an IP address"
    return None


def check_token(value: str) -> str | None:
    if not value.strip():
        return "the API key cannot be empty"
    if any(c.isspace() for c in value):
        return "an API key has no spaces"
    return None


def check_filters(value: str) -> str | None:
    if not value.strip():
        return None
    try:
        rules = json.loads(value)
    except ValueError as err:
        return f"filters are JSON rules: {err}"
    if not isinstance(rules, list | dict):
        return "filters are a JSON list or object of rules"
    return None


def check_core_name(value: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", value):
        return "lower-case letters, digits and '-'"
    return None


def check_product(value: str) -> str | None:
    return None if value in PRODUCTS else f"one of: {', '.join(PRODUCTS)}"


HL7_LANGUAGES = ("EN", "FR")


def check_hl7_name(value: str) -> str | None:
    if any(c in value for c in "^|~\\&") or any(ord(c) < 0x20 for c in value):
        return "no HL7 delimiter (^ | ~ \\ &) and no control characters"
    if len(value) > 180:
        return "at most 180 characters"
    return None


def check_language(value: str) -> str | None:
    return None if value in HL7_LANGUAGES else f"one of: {', '.join(HL7_LANGUAGES)}"


def check_yes_no(value: str) -> str | None:
    return None if value in ("yes", "no") else "yes or no"


Kind = Literal["text", "secret", "select", "url", "yes-no"]


@dataclass(frozen=True)
class Question:
    key: str  # the option is --key with '-' for '_'
    message: str
    kind: Kind
    check: Validator
    default: str = ""
    asked_when: Callable[[Mapping[str, str]], bool] = field(default=lambda answers: True)
    choices: tuple[str, ...] = tuple(PRODUCTS)  # of a "select"

    @property
    def option(self) -> str:
        return "--" + self.key.replace("_", "-")


def _hl7(answers: Mapping[str, str]) -> bool:
    return answers.get("hl7") == "yes"


def _core2(answers: Mapping[str, str]) -> bool:
    return answers.get("second_core") == "yes"


QUESTIONS: tuple[Question, ...] = (
    Question("site", "Site name (names the settings file)", "text", check_site),
    Question("product", "Product", "select", check_product, "Milvue Suite"),
    Question("api_url", "AI environment", "url", check_url),
    Question("token", "API key (token)", "secret", check_token),
    Question("pacs_aet", "PACS receiving results: AE title", "text", check_ae_title, "PACS"),
    Question("pacs_host", "PACS receiving results: host or IP", "text", check_host),
    Question("pacs_port", "PACS receiving results: port", "text", check_port, "104"),
    Question("aet", "pacsor's own AE title (SCP)", "text", check_ae_title, "MILVUE"),
    Question("port", "pacsor's own DICOM port (SCP)", "text", check_port, "1040"),
    Question("filters", "Study filters (JSON rules, empty: every study)", "text", check_filters),
    Question("hl7", "Send HL7 results to the RIS?", "yes-no", check_yes_no, "no"),
    Question("ris_host", "RIS: host or IP", "text", check_host, asked_when=_hl7),
    Question("ris_port", "RIS: HL7 (MLLP) port", "text", check_port, "2575", asked_when=_hl7),
    Question(
        "ris_application",
        "RIS: receiving application (MSH-5)",
        "text",
        check_hl7_name,
        asked_when=_hl7,
    ),
    Question(
        "ris_facility", "RIS: receiving facility (MSH-6)", "text", check_hl7_name, asked_when=_hl7
    ),
    Question(
        "hl7_language",
        "HL7: language of the results",
        "select",
        check_language,
        "EN",
        asked_when=_hl7,
        choices=HL7_LANGUAGES,
    ),
    Question("second_core", "Add a second AI core?", "yes-no", check_yes_no, "no"),
    Question("core2_name", "Second core: name", "text", check_core_name, "core2", _core2),
    Question("core2_product", "Second core: product", "select", check_product, "", _core2),
    Question("core2_url", "Second core: AI environment", "url", check_url, "", _core2),
    Question("core2_token", "Second core: API key", "secret", check_token, "", _core2),
)


def _ask(question: Question) -> str:
    """One prompt, checked as it is typed; Ctrl-C stops the wizard."""
    import questionary

    def validate(text: str) -> bool | str:
        return question.check(text) or True

    if question.kind == "select":
        answer = questionary.select(
            question.message, choices=list(question.choices), default=question.default or None
        ).unsafe_ask()
    elif question.kind == "url":
        choice = questionary.select(
            question.message, choices=[*ENVIRONMENTS, OTHER_URL]
        ).unsafe_ask()
        if choice != OTHER_URL:
            return ENVIRONMENTS[choice]
        answer = questionary.text("URL", validate=validate).unsafe_ask()
    elif question.kind == "yes-no":
        yes = questionary.confirm(question.message, default=question.default == "yes")
        answer = "yes" if yes.unsafe_ask() else "no"
    elif question.kind == "secret":
        answer = questionary.password(question.message, validate=validate).unsafe_ask()
    else:
        answer = questionary.text(
            question.message, default=question.default, validate=validate
        ).unsafe_ask()
    return str(answer)


def collect(
    given: Mapping[str, str | None],
    interactive: bool,
    ask: Callable[[Question], str] = _ask,
) -> dict[str, str]:
    """Every answer: from `given` (options, checked) or asked in the terminal."""
    answers: dict[str, str] = {}
    for question in QUESTIONS:
        if not question.asked_when(answers):
            continue
        value = given.get(question.key)
        if value is not None:
            if problem := question.check(value):
                raise ConfigError(f"{question.option}: {problem}, got {value!r}")
            answers[question.key] = value
        elif interactive:
            answers[question.key] = ask(question)
        elif question.default or question.check("") is None:  # an empty answer is fine
            answers[question.key] = question.default
        else:
            raise ConfigError(f"{question.option}: needed when setup does not run in a terminal")
    return answers


def site_settings(answers: Mapping[str, str]) -> dict[str, str]:
    """The site file's variables, from the answers."""
    env = {
        "MILVUE_AET": answers["aet"],
        "PORT": answers["port"],
        "API_URL": answers["api_url"],
        "TOKEN": answers["token"],
        "INFERENCE_COMMANDS": ",".join(PRODUCTS[answers["product"]]),
        "PACS_AET": answers["pacs_aet"],
        "PACS_IP": answers["pacs_host"],
        "PACS_PORT": answers["pacs_port"],
        "HL7_ENABLE": "true" if answers["hl7"] == "yes" else "false",
    }
    if answers.get("filters"):
        env["DICOM_FILTERS"] = answers["filters"]
    if answers["hl7"] == "yes":
        env["HL7_RIS_IP"] = answers["ris_host"]
        env["HL7_RIS_PORT"] = answers["ris_port"]
        env["HL7_LANGUAGE"] = answers["hl7_language"]
        for key, name in (
            ("ris_application", "HL7_RECEIVING_APPLICATION"),
            ("ris_facility", "HL7_RECEIVING_FACILITY"),
        ):
            if answers[key]:
                env[name] = answers[key]
    if answers["second_core"] == "yes":
        env["CORE_NAME_1"] = answers["core2_name"]
        env["API_URL_1"] = answers["core2_url"]
        env["TOKEN_1"] = answers["core2_token"]
        env["INFERENCE_COMMANDS_1"] = ",".join(PRODUCTS[answers["core2_product"]])
    return env


def _quoted(value: str) -> str:
    """A value as read_dotenv and docker compose both read it back unchanged."""
    if re.fullmatch(r"[A-Za-z0-9_./:@,+-]*", value):
        return value
    if "'" in value:
        raise ConfigError(f"a value cannot hold a single quote: {value!r}")
    return f"'{value}'"


def site_file(project: Path, site: str) -> Path:
    return project / ENV_DIR / f".env.{site}"


def write_site(
    project: Path, site: str, env: Mapping[str, str], written_by: str = "pacsor setup"
) -> Path:
    """Write env-files/.env.<site> and point .env at it; returns the file written."""
    target = site_file(project, site)
    relative = f"{ENV_DIR}/.env.{site}"
    lines = [
        f"# pacsor settings of site {site}, written by `{written_by}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "# `docker compose --env-file " + relative + " up -d` hands this file to the containers.",
        f"PACSOR_ENV_FILE={relative}",
        *(f"{name}={_quoted(value)}" for name, value in env.items()),
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.chmod(0o600)  # it holds API keys
    partial.replace(target)
    link = project / ".env"
    if link.exists() and not link.is_symlink():
        kept = link.with_name(".env.before-setup")
        link.replace(kept)
        print(f"pacsor: the former .env is kept as {kept.name}", file=sys.stderr)
    temporary = link.with_name(".env.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(relative)
    temporary.replace(link)  # atomic: .env is never missing
    return target


def run_setup(project: Path, given: Mapping[str, str | None], interactive: bool) -> Path:
    answers = collect(given, interactive)
    env = site_settings(answers)
    # The settings as pacsor will read them: a problem is found now, not at start-up.
    load_settings(environ=env, dotenv=None)
    return write_site(project, answers["site"], env)


def masked(name: str, value: str) -> str:
    if SECRET.search(name) and value:
        return "*" * 8
    return value


def show(project: Path) -> list[str]:
    """The current configuration (what .env points to), secrets masked."""
    link = project / ".env"
    if not link.exists():
        raise ConfigError(".env: no site configured here; run `pacsor setup`")
    where = f".env -> {os.readlink(link)}" if link.is_symlink() else ".env"
    values = read_dotenv(link)
    return [f"# {where}", *(f"{name}={masked(name, value)}" for name, value in values.items())]


def options_of(args: Any) -> dict[str, str | None]:
    """The answers given on the command line (argparse namespace), by question key."""
    given: dict[str, str | None] = {}
    for question in QUESTIONS:
        value = getattr(args, question.key, None)
        if isinstance(value, bool):
            value = "yes" if value else "no"
        given[question.key] = value
    return given
