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

from pacsor.config import ConfigError, load_settings, parse_destination, read_dotenv
from pacsor.config.products import Product, load_products
from pacsor.config.settings import SAME_AS_FIRST
from pacsor.config.variables import mask_urls
from pacsor.jetstream.nats_auth import ensure_deployment_secrets

# The products and their environments: pacsor/config/environments.json, which a vendor edits.
CATALOGUE: dict[str, Product] = load_products()
PRODUCTS: dict[str, tuple[str, ...]] = {
    name: product.inference_commands for name, product in CATALOGUE.items()
}
OTHER_URL = "Another URL (type it)"
ENV_DIR = "env-files"
SECRET = re.compile(r"TOKEN|PASSWORD|SECRET|STORE_KEY")

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


def check_destinations(value: str) -> str | None:
    """A second core's destinations: AET@host:port[?tls], comma-separated, or same-as-first."""
    if value.strip().lower() == SAME_AS_FIRST:
        return None
    try:
        for item in value.split(","):
            parse_destination("destination", item)
    except ConfigError:
        return f"AET@host:port (?tls for TLS), comma-separated, or {SAME_AS_FIRST}"
    return None


def check_more_destinations(value: str) -> str | None:
    """The first core's PACS after the first: none, or AET@host:port, comma-separated."""
    if not value.strip():
        return None
    if value.strip().lower() == SAME_AS_FIRST:
        return "the first core's own PACS: AET@host:port, comma-separated"
    return check_destinations(value)


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
    # Of a "url": the answer naming the product whose environments are offered.
    product_key: str = "product"
    # False: an option only; in a terminal the wizard asks for it otherwise (one at a time).
    prompted: bool = True

    @property
    def option(self) -> str:
        return "--" + self.key.replace("_", "-")


def _any_hl7(answers: Mapping[str, str]) -> bool:
    return any(answers.get(key) == "yes" for key in answers if key == "hl7" or key.endswith("_hl7"))


def _core2(answers: Mapping[str, str]) -> bool:
    return answers.get("second_core") == "yes"


def core_questions(n: int) -> tuple[Question, ...]:
    """The questions about core n (2, 3, ...: written as CORE_NAME_1, CORE_NAME_2, ...)."""
    label = "Second core" if n == 2 else f"Core {n}"
    p = f"core{n}_"
    when = _core2 if n == 2 else (lambda answers: True)
    return (
        Question(p + "name", f"{label}: name", "text", check_core_name, f"core{n}", when),
        Question(p + "product", f"{label}: product", "select", check_product, "", when),
        Question(
            p + "url",
            f"{label}: AI environment",
            "url",
            check_url,
            "",
            when,
            product_key=p + "product",
        ),
        Question(p + "token", f"{label}: API key", "secret", check_token, "", when),
        Question(
            p + "destinations",
            f"{label}: where its results go (AET@host:port, or {SAME_AS_FIRST}: the first core's)",
            "text",
            check_destinations,
            SAME_AS_FIRST,
            when,
            prompted=False,
        ),
        Question(
            p + "hl7", f"{label}: send its results to the RIS?", "yes-no", check_yes_no, "no", when
        ),
    )


FIRST_CORE: tuple[Question, ...] = (
    Question("site", "Site name (names the settings file)", "text", check_site),
    Question("product", "Product", "select", check_product, "Milvue Suite"),
    Question("api_url", "AI environment", "url", check_url),
    Question("token", "API key (token)", "secret", check_token),
)
PACS: tuple[Question, ...] = (
    Question("pacs_aet", "PACS receiving results: AE title", "text", check_ae_title, "PACS"),
    Question("pacs_host", "PACS receiving results: host or IP", "text", check_host),
    Question("pacs_port", "PACS receiving results: port", "text", check_port, "104"),
)
GATEWAY: tuple[Question, ...] = (
    Question(
        "destinations",
        "More PACS for the first core (AET@host:port,...)",
        "text",
        check_more_destinations,
        prompted=False,
    ),
    Question("aet", "pacsor's own AE title (SCP)", "text", check_ae_title, "MILVUE"),
    Question("port", "pacsor's own DICOM port (SCP)", "text", check_port, "1040"),
    Question("filters", "Study filters (JSON rules, empty: every study)", "text", check_filters),
    Question("hl7", "Send this core's HL7 results to the RIS?", "yes-no", check_yes_no, "no"),
    Question("second_core", "Add a second AI core?", "yes-no", check_yes_no, "no"),
)
RIS: tuple[Question, ...] = (
    Question("ris_host", "RIS: host or IP", "text", check_host, asked_when=_any_hl7),
    Question("ris_port", "RIS: HL7 (MLLP) port", "text", check_port, "2575", asked_when=_any_hl7),
    Question(
        "ris_application",
        "RIS: receiving application (MSH-5)",
        "text",
        check_hl7_name,
        asked_when=_any_hl7,
    ),
    Question(
        "ris_facility",
        "RIS: receiving facility (MSH-6)",
        "text",
        check_hl7_name,
        asked_when=_any_hl7,
    ),
    Question(
        "hl7_language",
        "HL7: language of the results",
        "select",
        check_language,
        "EN",
        asked_when=_any_hl7,
        choices=HL7_LANGUAGES,
    ),
)
# Every question that is also an option (`pacsor setup --token ...`): cores 1 and 2 as options;
# in a terminal, as many cores and PACS as the site has.
QUESTIONS: tuple[Question, ...] = (*FIRST_CORE, *PACS, *GATEWAY, *core_questions(2), *RIS)


def _ask(question: Question, answers: Mapping[str, str]) -> str:
    """One prompt, checked as it is typed; Ctrl-C stops the wizard."""
    import questionary

    def validate(text: str) -> bool | str:
        return question.check(text) or True

    if question.kind == "select":
        answer = questionary.select(
            question.message, choices=list(question.choices), default=question.default or None
        ).unsafe_ask()
    elif question.kind == "url":
        product = CATALOGUE.get(answers.get(question.product_key, ""))
        environments = {
            f"{label} ({url})": url
            for label, url in (product.environments if product else {}).items()
        }
        choice = questionary.select(
            question.message, choices=[*environments, OTHER_URL]
        ).unsafe_ask()
        if choice != OTHER_URL:
            return environments[choice]
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


# What the wizard reaches before saving, in a terminal: each returns None or the problem.
ApiProbe = Callable[[str, str], str | None]  # (url, token)
EchoProbe = Callable[[str, str, int, str], str | None]  # (aet, host, port, our aet)


def _probe_api(url: str, token: str) -> str | None:
    """`pacsor check`'s probe of an AI core: reachable, token accepted."""
    import asyncio

    from pacsor.cli.preflight import probe_core

    return asyncio.run(probe_core(url, token))


def _echo(aet: str, host: str, port: int, ours: str) -> str | None:
    from pacsor.dicom.storage_scu import echo

    return echo(host, port, aet, ours, timeout=5.0)


@dataclass
class Wizard:
    """The answers so far, and how to get the next one: given (an option, checked), asked in
    the terminal, or the default."""

    given: Mapping[str, str | None]
    interactive: bool
    ask: Callable[[Question, Mapping[str, str]], str] = _ask
    probe_api: ApiProbe = _probe_api
    echo: EchoProbe = _echo
    say: Callable[[str], None] = print
    answers: dict[str, str] = field(default_factory=dict)

    def one(self, question: Question) -> None:
        if not question.asked_when(self.answers):
            return
        value = self.given.get(question.key)
        if value is not None:
            if problem := question.check(value):
                raise ConfigError(f"{question.option}: {problem}, got {value!r}")
            self.answers[question.key] = value
        elif self.interactive and question.prompted:
            self.answers[question.key] = self.ask(question, self.answers)
        elif question.default or question.check("") is None:  # an empty answer is fine
            self.answers[question.key] = question.default
        else:
            raise ConfigError(f"{question.option}: needed when setup does not run in a terminal")

    def confirm(self, message: str) -> bool:
        keep = Question("keep", message, "yes-no", check_yes_no, "no")
        return self.ask(keep, self.answers) == "yes"

    def environment(self, url_q: Question, token_q: Question) -> None:
        """The core's URL and key; a typed URL is reached once before it is kept."""
        while True:
            self.one(url_q)
            self.one(token_q)
            url, token = self.answers[url_q.key], self.answers[token_q.key]
            product = CATALOGUE.get(self.answers.get(url_q.product_key, ""))
            offered = set(product.environments.values()) if product else set()
            if not self.interactive or url in offered:
                return
            problem = self.probe_api(url, token)
            self.say(f"AI core {url}: {problem or 'reachable, token accepted'}")
            if problem is None or self.confirm("Keep this environment anyway?"):
                return

    def destination(self, prefix: str, label: str) -> str:
        """One PACS, C-ECHOed in a terminal before it is kept: AET@host:port."""
        questions = (
            Question(prefix + "_aet", f"{label}: AE title", "text", check_ae_title, "PACS"),
            Question(prefix + "_host", f"{label}: host or IP", "text", check_host),
            Question(prefix + "_port", f"{label}: port", "text", check_port, "104"),
        )
        while True:
            for question in questions:
                self.one(question)
            aet, host, port = (self.answers[q.key] for q in questions)
            if not self.interactive:
                return f"{aet}@{host}:{port}"
            problem = self.echo(aet, host, int(port), self.given.get("aet") or "MILVUE")
            self.say(f"C-ECHO {aet}@{host}:{port}: {problem or 'answers'}")
            if problem is None or self.confirm("Keep this PACS anyway?"):
                return f"{aet}@{host}:{port}"
            for question in questions:
                self.answers.pop(question.key, None)

    def more_destinations(self, label: str, key: str) -> None:
        """In a terminal, as many more PACS as the site has, each C-ECHOed."""
        if not self.interactive or self.given.get(key) is not None:
            return
        found: list[str] = []
        while self.confirm(f"{label}: add another PACS?"):
            n = len(found) + 2
            found.append(self.destination(f"{key}{n}", f"{label}, PACS {n}"))
        self.answers[key] = ",".join(found)


def collect(
    given: Mapping[str, str | None],
    interactive: bool,
    ask: Callable[[Question, Mapping[str, str]], str] = _ask,
    probe_api: ApiProbe = _probe_api,
    echo: EchoProbe = _echo,
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Every answer: from `given` (options, checked) or asked in the terminal.

    Cores are numbered 2, 3, ... in the answers (core{n}_name, ...); `cores` lists them."""
    w = Wizard(given, interactive, ask, probe_api, echo, say)
    for question in FIRST_CORE[:2]:
        w.one(question)
    w.environment(FIRST_CORE[2], FIRST_CORE[3])
    first = w.destination("pacs", "PACS receiving results")
    aet, _, rest = first.partition("@")
    host, _, port = rest.rpartition(":")
    w.answers.update({"pacs_aet": aet, "pacs_host": host, "pacs_port": port})
    w.one(GATEWAY[0])
    w.more_destinations("First core", "destinations")
    for question in GATEWAY[1:]:
        w.one(question)
    n = 2
    while w.answers.get("second_core") == "yes" if n == 2 else w.confirm("Add another AI core?"):
        questions = core_questions(n)
        w.one(questions[0])
        w.one(questions[1])
        w.environment(questions[2], questions[3])
        key = questions[4].key
        name = w.answers[questions[0].key]
        if interactive and given.get(key) is None:
            own = w.confirm(f"Core {name}: send its results to other PACS than the first core's?")
            if own:
                found = w.destination(f"{key}1", f"Core {name}, PACS 1")
                w.more_destinations(f"Core {name}", key)
                w.answers[key] = ",".join(d for d in (found, w.answers.get(key, "")) if d)
            else:
                w.answers[key] = SAME_AS_FIRST
        else:
            w.one(questions[4])
        w.one(questions[5])
        n += 1
        if not interactive:
            break
    w.answers["cores"] = ",".join(str(k) for k in range(2, n))
    for question in RIS:
        w.one(question)
    return w.answers


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
    }
    if answers.get("destinations"):
        env["DESTINATIONS"] = answers["destinations"]
    if answers.get("filters"):
        env["DICOM_FILTERS"] = answers["filters"]
    cores = [int(n) for n in answers.get("cores", "").split(",") if n]
    # Which cores' results go to the RIS: (name, product) of each.
    to_ris = [("default", answers["product"])] if answers.get("hl7") == "yes" else []
    for index, n in enumerate(cores, start=1):
        p = f"core{n}_"
        env[f"CORE_NAME_{index}"] = answers[p + "name"]
        env[f"API_URL_{index}"] = answers[p + "url"]
        env[f"TOKEN_{index}"] = answers[p + "token"]
        env[f"INFERENCE_COMMANDS_{index}"] = ",".join(PRODUCTS[answers[p + "product"]])
        # Said, never implied: a core's results reach the first core's PACS only when asked.
        env[f"DESTINATIONS_{index}"] = answers.get(p + "destinations") or SAME_AS_FIRST
        if answers.get(p + "hl7") == "yes":
            to_ris.append((answers[p + "name"], answers[p + "product"]))
    env["HL7_ENABLE"] = "true" if to_ris else "false"
    if to_ris:
        env["HL7_RIS_IP"] = answers["ris_host"]
        env["HL7_RIS_PORT"] = answers["ris_port"]
        env["HL7_LANGUAGE"] = answers["hl7_language"]
        for key, name in (
            ("ris_application", "HL7_RECEIVING_APPLICATION"),
            ("ris_facility", "HL7_RECEIVING_FACILITY"),
        ):
            if answers[key]:
                env[name] = answers[key]
        # Without HL7_CORES, only the first core's results go to the RIS.
        if [name for name, _ in to_ris] != ["default"]:
            env["HL7_CORES"] = ",".join(name for name, _ in to_ris)
        # The product's own findings feed the message (the first core that sends to the RIS).
        env.update(CATALOGUE[to_ris[0][1]].hl7)
        # `docker compose up -d` then starts the hl7 service.
        env["COMPOSE_PROFILES"] = "hl7"
    return env


def _quoted(value: str) -> str:
    """A value as read_dotenv and docker compose both read it back unchanged."""
    if re.fullmatch(r"[A-Za-z0-9_./:@,+-]*", value):
        return value
    if "'" in value:
        raise ConfigError(f"a value cannot hold a single quote: {value!r}")
    return f"'{value}'"


def nats_secrets_folder(site: str) -> str:
    """Where a site's NATS credentials are, relative to the project (compose reads them)."""
    return f"{ENV_DIR}/nats.{site}"


def site_file(project: Path, site: str) -> Path:
    return project / ENV_DIR / f".env.{site}"


def write_site(
    project: Path,
    site: str,
    env: Mapping[str, str],
    encrypt_nats_store: bool = False,
    written_by: str = "pacsor setup",
) -> Path:
    """Write env-files/.env.<site> and the site's NATS credentials, and point .env at the
    file; returns the file written."""
    target = site_file(project, site)
    relative = f"{ENV_DIR}/.env.{site}"
    secrets = nats_secrets_folder(site)
    lines = [
        f"# pacsor settings of site {site}, written by `{written_by}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "# `docker compose --env-file " + relative + " up -d` hands this file to the containers.",
        f"PACSOR_ENV_FILE={relative}",
        "# The NATS credentials compose hands to nats-server and pacsor as Docker secrets.",
        f"PACSOR_NATS_SECRETS={secrets}",
        *(f"{name}={_quoted(value)}" for name, value in env.items()),
    ]
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.parent.chmod(0o700)  # it holds API keys and the NATS credentials
    # Imported here: the components (and their libraries) load only when secrets are made.
    from pacsor.components import NATS_ROLES

    ensure_deployment_secrets(project / secrets, NATS_ROLES, encrypt_nats_store)
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


def run_setup(
    project: Path,
    given: Mapping[str, str | None],
    interactive: bool,
    encrypt_nats_store: bool = False,
) -> Path:
    answers = collect(given, interactive)
    env = site_settings(answers)
    # The settings as pacsor will read them: a problem is found now, not at start-up.
    load_settings(environ=env, dotenv=None)
    return write_site(project, answers["site"], env, encrypt_nats_store)


def masked(name: str, value: str) -> str:
    if SECRET.search(name) and value:
        return "*" * 8
    return mask_urls(value)


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
