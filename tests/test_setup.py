"""`pacsor setup` driven through a real terminal (pexpect), as an installer answers it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

from pacsor.cli.setup_wizard import (
    check_ae_title,
    check_filters,
    check_port,
    check_url,
)
from pacsor.components import BY_NAME, NATS_ROLES
from pacsor.config import ConfigError, load_settings, read_dotenv
from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from tests.harness import PROJECT, ReceivingPacs, cli_env, pacsor_cli
from tests.nats_server import free_port

DOWN = "\x1b[B"  # arrow down
CLEAR = "\x15"  # Ctrl-U: erase the line typed so far (or the default offered)


# Tall enough that nothing the wizard printed scrolls away: a prompt asked twice counts twice.
ROWS, COLUMNS = 150, 140


class Terminal:
    """The wizard in a pseudo-terminal, its screen rendered by a terminal emulator (pyte).

    prompt_toolkit redraws only what changed, so the bytes alone do not spell what a person
    reads; the rendered screen does.
    """

    def __init__(self, cwd: Path) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "pacsor", "setup"],
            cwd=str(cwd),
            env=cli_env(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm"),
            encoding="utf-8",
            dimensions=(ROWS, COLUMNS),
            timeout=30,
        )
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.Stream(self.screen)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, wanted: str, timeout: float = 30, times: int = 1) -> None:
        """Until `wanted` is on the screen `times` times (a prompt asked again counts anew)."""
        deadline = time.monotonic() + timeout
        while self.text().count(wanted) < times:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{wanted!r} never on screen:\n{self.text()}")
            try:
                self.stream.feed(self.child.read_nonblocking(4096, timeout=min(left, 1)))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                if self.text().count(wanted) < times:
                    raise AssertionError(f"exited before {wanted!r}:\n{self.text()}") from None

    def answer(self, prompt: str, keys: str, times: int = 1) -> None:
        self.wait_for(prompt, times=times)
        self.child.send(keys)

    def finish(self) -> int:
        self.child.expect(pexpect.EOF)
        self.stream.feed(self.child.before or "")
        self.child.close()
        return int(self.child.exitstatus if self.child.exitstatus is not None else -1)


def test_an_installer_answers_the_wizard_in_a_terminal(
    tmp_path: Path, pacs: ReceivingPacs, archive: ReceivingPacs
) -> None:
    closed = free_port()  # a PACS that is not there: its C-ECHO fails
    with running_simulator(SimulatorSettings(token="s3cret-key")) as (api, _state):
        terminal = Terminal(tmp_path)
        answer = terminal.answer
        answer("Site name", "lyon-sud\r")
        answer("Product", DOWN + "\r")  # SmartTrauma
        # SmartTrauma's environments, from the data file, then "another URL".
        terminal.wait_for("API simulator on this machine (http://127.0.0.1:8421)")
        answer("Another URL (type it)", DOWN + DOWN + "\r")
        answer("? URL", "not a url\r")
        answer("expected an http:// or https:// URL", CLEAR + api + "\r")
        answer("API key (token)", "wrong-key\r")
        # The typed URL is reached once, with the key: refused, so asked again.
        answer("Keep this environment anyway?", "n")
        answer("AI environment", DOWN + DOWN + "\r", times=2)
        answer("? URL", api + "\r", times=2)
        answer("API key (token)", "s3cret-key\r", times=2)
        terminal.wait_for(f"AI core {api}: reachable, token accepted")
        answer("PACS receiving results: AE title", CLEAR + "ABCDEFGHIJKLMNOPQ\r")
        answer("at most 16 characters, this one has 17", CLEAR + "BAD\\AET\r")
        answer("no backslash and no control characters", CLEAR + "MAINPACS\r")
        answer("PACS receiving results: host or IP", "127.0.0.1\r")
        answer("PACS receiving results: port", CLEAR + "70000\r")
        answer("a port is a number from 1 to 65535", CLEAR + f"{pacs.port}\r")
        terminal.wait_for(f"C-ECHO MAINPACS@127.0.0.1:{pacs.port}: answers")
        answer("First core: add another PACS?", "y")
        answer("First core, PACS 2: AE title", CLEAR + "ARCHIVE\r")
        answer("First core, PACS 2: host or IP", "127.0.0.1\r")
        answer("First core, PACS 2: port", CLEAR + f"{closed}\r")
        answer("Keep this PACS anyway?", "n")  # its C-ECHO failed: typed again
        answer("First core, PACS 2: AE title", CLEAR + "ARCHIVE\r", times=2)
        answer("First core, PACS 2: host or IP", "127.0.0.1\r", times=2)
        answer("First core, PACS 2: port", CLEAR + f"{archive.port}\r", times=2)
        terminal.wait_for(f"C-ECHO ARCHIVE@127.0.0.1:{archive.port}: answers")
        answer("First core: add another PACS?", "n", times=2)
        answer("pacsor's own AE title (SCP)", "\r")  # MILVUE, offered
        answer("pacsor's own DICOM port (SCP)", "\r")  # 1040, offered
        answer("Study filters", "[oops\r")
        answer("filters are JSON rules", CLEAR + "\r")
        answer("Send this core's HL7 results to the RIS?", "y")
        answer("Add a second AI core?", "y")
        answer("Second core: name", CLEAR + "chest\r")
        answer("Second core: product", DOWN * 3 + "\r")  # SmartChest
        answer("Second core: AI environment", "\r")  # the compose demo's simulator
        answer("Second core: API key", "other-key\r")
        answer("Core chest: send its results to other PACS than the first core's?", "y")
        answer("Core chest, PACS 1: AE title", CLEAR + "ARCHIVE\r")
        answer("Core chest, PACS 1: host or IP", "127.0.0.1\r")
        answer("Core chest, PACS 1: port", CLEAR + f"{archive.port}\r")
        terminal.wait_for("Core chest: add another PACS?")
        answer("Core chest: add another PACS?", "n")
        answer("Second core: send its results to the RIS?", "n")
        answer("Add another AI core?", "y")  # a third: as many as the site has
        answer("Core 3: name", CLEAR + "research\r")
        answer("Core 3: product", "\r")  # Milvue Suite
        answer("Core 3: AI environment", "\r")
        answer("Core 3: API key", "third-key\r")
        answer("Core research: send its results to other PACS than the first core's?", "n")
        answer("Core 3: send its results to the RIS?", "y")
        answer("Add another AI core?", "n", times=2)
        answer("RIS: host or IP", "ris.hospital.local\r")
        answer("RIS: HL7 (MLLP) port", "\r")  # 2575, offered
        answer("receiving application (MSH-5)", "RIS^X\r")
        answer("no HL7 delimiter", CLEAR + "RADRIS\r")
        answer("receiving facility (MSH-6)", "\r")  # none
        answer("HL7: language of the results", DOWN + "\r")  # FR
        terminal.wait_for("wrote env-files/.env.lyon-sud")
        assert terminal.finish() == 0

    link = tmp_path / ".env"
    assert link.is_symlink() and os.readlink(link) == "env-files/.env.lyon-sud"
    written = read_dotenv(link)
    assert written == {
        "PACSOR_ENV_FILE": "env-files/.env.lyon-sud",
        "PACSOR_NATS_SECRETS": "env-files/nats.lyon-sud",
        "MILVUE_AET": "MILVUE",
        "PORT": "1040",
        "API_URL": api,
        "TOKEN": "s3cret-key",
        "INFERENCE_COMMANDS": "detection,measures",
        "PACS_AET": "MAINPACS",
        "PACS_IP": "127.0.0.1",
        "PACS_PORT": str(pacs.port),
        "DESTINATIONS": f"ARCHIVE@127.0.0.1:{archive.port}",
        "CORE_NAME_1": "chest",
        "API_URL_1": "http://simulator:8421",
        "TOKEN_1": "other-key",
        "INFERENCE_COMMANDS_1": "smartchest",
        "DESTINATIONS_1": f"ARCHIVE@127.0.0.1:{archive.port}",
        "CORE_NAME_2": "research",
        "API_URL_2": "http://simulator:8421",
        "TOKEN_2": "third-key",
        "INFERENCE_COMMANDS_2": "smarturgences,smartxpert",
        "DESTINATIONS_2": "same-as-first",
        "HL7_ENABLE": "true",
        "HL7_RIS_IP": "ris.hospital.local",
        "HL7_RIS_PORT": "2575",
        "HL7_LANGUAGE": "FR",
        "HL7_RECEIVING_APPLICATION": "RADRIS",
        "HL7_CORES": "default,research",
        # SmartTrauma's HL7 defaults, from the data file: its own findings feed the message.
        "INCLUDE_DETECTIONS_FINDINGS": "true",
        "DETECTION_INFERENCE_COMMAND": "detection",
        "INCLUDE_MEASURES_FINDINGS": "true",
        "MEASURE_INFERENCE_COMMAND": "measures",
        "COMPOSE_PROFILES": "hl7",
    }
    assert (tmp_path / "env-files" / ".env.lyon-sud").stat().st_mode & 0o077 == 0
    # The site's NATS credentials, for compose's secrets: only the operator reaches them.
    assert (tmp_path / "env-files").stat().st_mode & 0o077 == 0
    nats_secrets = tmp_path / "env-files" / "nats.lyon-sud"
    assert sorted(p.name for p in nats_secrets.iterdir()) == sorted(
        [
            "nats-passwords.conf",
            "nats-store.conf",
            "nats-routes.conf",  # the three-node cluster's
            "route.password",
            *(f"{r.user}.password" for r in NATS_ROLES),
        ]
    )
    assert {"pacsor", "reader", "report-provider", "scp", "admin"} <= {r.user for r in NATS_ROLES}
    assert (nats_secrets / "nats-store.conf").read_text() == ""  # not asked to encrypt
    # pacsor reads it back, through .env, as the site's settings.
    settings = load_settings(environ={}, dotenv=link)
    default, chest, research = settings.cores
    assert [core.name for core in settings.cores] == ["default", "chest", "research"]
    assert [d.ae_title for d in default.destinations] == ["MAINPACS", "ARCHIVE"]
    assert [d.ae_title for d in chest.destinations] == ["ARCHIVE"]
    assert research.destinations == default.destinations
    assert settings.hl7.enable and settings.hl7.ris_port == 2575
    assert settings.ris_cores == {"default", "research"}
    assert settings.hl7.language == "FR" and settings.hl7.receiving_application == "RADRIS"

    shown = pacsor_cli("setup", "--show", cwd=tmp_path)
    assert shown.returncode == 0
    assert "TOKEN=********" in shown.stdout and "TOKEN_1=********" in shown.stdout
    assert "s3cret-key" not in shown.stdout and "other-key" not in shown.stdout
    assert "PACS_IP=127.0.0.1" in shown.stdout and "TOKEN_2=********" in shown.stdout


def test_ctrl_c_writes_nothing(tmp_path: Path) -> None:
    terminal = Terminal(tmp_path)
    terminal.answer("Site name", "lyon\r")
    terminal.answer("Product", "\x03")
    terminal.wait_for("setup stopped; nothing written")
    assert terminal.finish() == 130
    assert not (tmp_path / ".env").exists() and not (tmp_path / "env-files").exists()


OPTIONS = [
    "--site=north",
    "--product=SmartChest",
    "--api-url=https://api.example.test",
    "--token=k3y",
    "--pacs-host=pacs.local",
    "--no-hl7",
    "--no-second-core",
]


def test_every_answer_as_an_option_and_a_former_env_kept(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TOKEN=old\n")
    result = pacsor_cli("setup", *OPTIONS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "pacsor: the former .env is kept as .env.before-setup\n"
    assert read_dotenv(tmp_path / ".env.before-setup") == {"TOKEN": "old"}
    written = read_dotenv(tmp_path / ".env")
    assert written["INFERENCE_COMMANDS"] == "smartchest" and written["PACS_AET"] == "PACS"
    # Run again for another site: .env follows, the first site's file stays.
    again = pacsor_cli("setup", *OPTIONS[1:], "--site=south", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert os.readlink(tmp_path / ".env") == "env-files/.env.south"
    assert (tmp_path / "env-files" / ".env.north").is_file()


@pytest.mark.parametrize(
    ("option", "line"),
    [
        ("--pacs-aet=ABCDEFGHIJKLMNOPQ", "--pacs-aet: an AE title has at most 16 characters"),
        ("--aet=A\\B", "--aet: an AE title has no backslash and no control characters"),
        ("--port=0", "--port: a port is a number from 1 to 65535"),
        ("--api-url=ftp://x", "--api-url: expected an http:// or https:// URL"),
        ("--product=Other", "--product: one of: Milvue Suite, SmartTrauma"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(tmp_path: Path, option: str, line: str) -> None:
    result = pacsor_cli("setup", *OPTIONS, option, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"pacsor: {line}") and result.stderr.count("\n") == 1
    assert not (tmp_path / ".env").exists()


def test_without_a_terminal_a_missing_answer_is_named(tmp_path: Path) -> None:
    result = pacsor_cli("setup", "--site=north", cwd=tmp_path)
    assert result.stderr == "pacsor: --api-url: needed when setup does not run in a terminal\n"


def test_the_checks_alone() -> None:
    assert check_ae_title("MILVUE") is None
    assert check_ae_title("A" * 16) is None
    assert check_ae_title("TAB\tAET") is not None
    assert check_port("65535") is None and check_port("65536") is not None
    assert check_url("http://10.0.0.1:8421") is None and check_url("http://") is not None
    assert check_filters("") is None and check_filters('[{"Modality": "CR"}]') is None


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI with Compose")
def test_compose_hands_the_site_file_to_the_containers(tmp_path: Path) -> None:
    written = pacsor_cli("setup", *OPTIONS, "--project-dir", str(tmp_path), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    # The project as an installer has it: compose.yaml, deploy/, and the wizard's files.
    for name in ("compose.yaml", "deploy"):
        (tmp_path / name).symlink_to(PROJECT / name)
    env = {k: v for k, v in os.environ.items() if k != "PACSOR_ENV_FILE"}
    config = subprocess.run(
        [
            "docker",
            "compose",
            "--env-file",
            "env-files/.env.north",
            "config",
            "--format",
            "json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if (
        config.returncode != 0
        and "compose" in config.stderr
        and "is not a docker command" in (config.stderr)
    ):
        pytest.skip("needs the Compose v2 plugin")
    assert config.returncode == 0, config.stderr
    services = json.loads(config.stdout)["services"]
    uploader = services["uploader"]["environment"]
    assert uploader["API_URL"] == "https://api.example.test"
    assert uploader["TOKEN"] == "k3y"
    assert uploader["INFERENCE_COMMANDS"] == "smartchest"
    assert services["dispatcher"]["environment"]["PACS_IP"] == "pacs.local"
    # The demo's defaults stay underneath what the site did not set.
    assert uploader["NATS_URL"] == "nats://nats:4222"


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI with Compose")
def test_env_example_copied_as_env_keeps_the_demo_working(tmp_path: Path) -> None:
    # A new user's first try: `cp .env.example .env`, then the demo profile.
    shutil.copy(PROJECT / ".env.example", tmp_path / ".env")
    for name in ("compose.yaml", "deploy"):
        (tmp_path / name).symlink_to(PROJECT / name)
    env = {k: v for k, v in os.environ.items() if k != "PACSOR_ENV_FILE"}
    config = subprocess.run(
        ["docker", "compose", "--profile", "demo", "config", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if config.returncode != 0 and "is not a docker command" in config.stderr:
        pytest.skip("needs the Compose v2 plugin")
    assert config.returncode == 0, config.stderr
    services = json.loads(config.stdout)["services"]
    for handler in ("uploader", "poller"):
        assert services[handler]["environment"]["TOKEN"] == "demo-token"
        assert services[handler]["environment"]["API_URL"] == "http://simulator:8421"
    assert services["dispatcher"]["environment"]["PACS_IP"] == "demo-pacs"
    # Each component is its own NATS user, its password the Docker secret of its own.
    assert BY_NAME.keys() - {"hl7"} <= services.keys()  # hl7 has a profile of its own
    for name in BY_NAME.keys() & services.keys():
        assert services[name]["environment"]["NATS_USER"] == name
        secret = f"nats-{name}-password"
        assert services[name]["environment"]["NATS_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        assert [s["source"] for s in services[name]["secrets"]] == [secret]
    # The settings pacsor itself reads from them start every handler; the NATS password is the
    # Docker secret compose mounts in the container, here a file of the test's.
    environment = services["dispatcher"]["environment"]
    (tmp_path / "nats-dispatcher-password").write_text("the-secret-compose-mounts\n")
    environment["NATS_PASSWORD_FILE"] = str(tmp_path / "nats-dispatcher-password")
    settings = load_settings(environ=environment, dotenv=None)
    assert (settings.nats_user, settings.nats_password) == (
        "dispatcher",
        "the-secret-compose-mounts",
    )
    assert [str(d) for d in settings.all_destinations()] == ["DEMOPACS@demo-pacs:11112"]


def test_options_give_any_pacs_each_core_its_own_and_the_product_hl7_defaults(
    tmp_path: Path,
) -> None:
    result = pacsor_cli(
        "setup",
        "--site=east",
        "--product=SmartTrauma",
        "--api-url=https://api.example.test",
        "--token=k3y",
        "--pacs-host=pacs.local",
        "--destinations=ARCH@archive:104,VIEW@viewer:11112",
        "--hl7",
        "--ris-host=ris.local",
        "--second-core",
        "--core2-name=chest",
        "--core2-product=SmartChest",
        "--core2-url=https://chest.example.test",
        "--core2-token=k2",
        "--core2-destinations=CHEST@chest-pacs:104",
        "--no-core2-hl7",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    settings = load_settings(environ={}, dotenv=tmp_path / ".env")
    default, chest = settings.cores
    assert [str(d) for d in default.destinations] == [
        "PACS@pacs.local:104",
        "ARCH@archive:104",
        "VIEW@viewer:11112",
    ]
    assert [str(d) for d in chest.destinations] == ["CHEST@chest-pacs:104"]
    # SmartTrauma's findings feed the HL7 message; the chest core's results do not go there.
    hl7 = settings.hl7
    assert (hl7.detection_command, hl7.measure_command) == ("detection", "measures")
    assert settings.ris_cores == {"default"}
    assert read_dotenv(tmp_path / ".env")["COMPOSE_PROFILES"] == "hl7"


def test_a_bad_destination_option_is_one_line(tmp_path: Path) -> None:
    result = pacsor_cli("setup", *OPTIONS, "--destinations=ARCH@archive", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "pacsor: --destinations: AET@host:port (?tls for TLS), comma-separated, or same-as-first, "
        "got 'ARCH@archive'\n"
    )


def test_the_products_come_from_a_file_a_vendor_edits(tmp_path: Path) -> None:
    from pacsor.config.products import PRODUCTS_FILE, load_products

    data = json.loads(PRODUCTS_FILE.read_text())
    data["products"]["SmartChest"]["environments"]["Hospital cloud"] = "https://ai.example.test"
    edited = tmp_path / "environments.json"
    edited.write_text(json.dumps(data))
    assert load_products(edited)["SmartChest"].environments["Hospital cloud"] == (
        "https://ai.example.test"
    )
    data["products"]["SmartChest"]["hl7"]["DETECTION_COMMAND"] = "smartchest"
    edited.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="'SmartChest': DETECTION_COMMAND is no HL7 setting"):
        load_products(edited)
    data["products"]["SmartChest"]["hl7"] = {"DETECTION_INFERENCE_COMMAND": "smartxpert"}
    edited.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="'SmartChest': DETECTION_INFERENCE_COMMAND: "):
        load_products(edited)
