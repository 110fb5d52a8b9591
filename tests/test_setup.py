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
from pacsor.config import load_settings, read_dotenv
from tests.harness import PROJECT, cli_env, pacsor_cli

DOWN = "\x1b[B"  # arrow down
CLEAR = "\x15"  # Ctrl-U: erase the line typed so far (or the default offered)


ROWS, COLUMNS = 40, 140


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

    def wait_for(self, wanted: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.text():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{wanted!r} never on screen:\n{self.text()}")
            try:
                self.stream.feed(self.child.read_nonblocking(4096, timeout=min(left, 1)))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                if wanted not in self.text():
                    raise AssertionError(f"exited before {wanted!r}:\n{self.text()}") from None

    def answer(self, prompt: str, keys: str) -> None:
        self.wait_for(prompt)
        self.child.send(keys)

    def finish(self) -> int:
        self.child.expect(pexpect.EOF)
        self.stream.feed(self.child.before or "")
        self.child.close()
        return int(self.child.exitstatus if self.child.exitstatus is not None else -1)


def test_an_installer_answers_the_wizard_in_a_terminal(tmp_path: Path) -> None:
    terminal = Terminal(tmp_path)
    answer = terminal.answer
    answer("Site name", "lyon-sud\r")
    answer("Product", DOWN + "\r")  # SmartTrauma
    answer("AI environment", DOWN + DOWN + "\r")  # type another URL
    answer("URL", "not a url\r")
    answer("expected an http:// or https:// URL", CLEAR + "https://api.example.test\r")
    answer("API key (token)", "s3cret-key\r")
    answer("PACS receiving results: AE title", CLEAR + "ABCDEFGHIJKLMNOPQ\r")
    answer("at most 16 characters, this one has 17", CLEAR + "BAD\\AET\r")
    answer("no backslash and no control characters", CLEAR + "MAINPACS\r")
    answer("PACS receiving results: host or IP", "10.1.2.3\r")
    answer("PACS receiving results: port", CLEAR + "70000\r")
    answer("a port is a number from 1 to 65535", CLEAR + "11112\r")
    answer("pacsor's own AE title (SCP)", "\r")  # MILVUE, offered
    answer("pacsor's own DICOM port (SCP)", "\r")  # 1040, offered
    answer("Study filters", "[oops\r")
    answer("filters are JSON rules", CLEAR + "\r")
    answer("Send HL7 results to the RIS?", "y")
    answer("RIS: host or IP", "ris.hospital.local\r")
    answer("RIS: HL7 (MLLP) port", "\r")  # 2575, offered
    answer("receiving application (MSH-5)", "RIS^X\r")
    answer("no HL7 delimiter", CLEAR + "RADRIS\r")
    answer("receiving facility (MSH-6)", "\r")  # none
    answer("HL7: language of the results", DOWN + "\r")  # FR
    answer("Add a second AI core?", "y")
    answer("Second core: name", CLEAR + "chest\r")
    answer("Second core: product", DOWN * 3 + "\r")  # SmartChest
    answer("Second core: AI environment", "\r")  # the compose demo's simulator
    answer("Second core: API key", "other-key\r")
    terminal.wait_for("wrote env-files/.env.lyon-sud")
    assert terminal.finish() == 0

    link = tmp_path / ".env"
    assert link.is_symlink() and os.readlink(link) == "env-files/.env.lyon-sud"
    written = read_dotenv(link)
    assert written == {
        "PACSOR_ENV_FILE": "env-files/.env.lyon-sud",
        "MILVUE_AET": "MILVUE",
        "PORT": "1040",
        "API_URL": "https://api.example.test",
        "TOKEN": "s3cret-key",
        "INFERENCE_COMMANDS": "detection,measures",
        "PACS_AET": "MAINPACS",
        "PACS_IP": "10.1.2.3",
        "PACS_PORT": "11112",
        "HL7_ENABLE": "true",
        "HL7_RIS_IP": "ris.hospital.local",
        "HL7_RIS_PORT": "2575",
        "HL7_LANGUAGE": "FR",
        "HL7_RECEIVING_APPLICATION": "RADRIS",
        "CORE_NAME_1": "chest",
        "API_URL_1": "http://simulator:8421",
        "TOKEN_1": "other-key",
        "INFERENCE_COMMANDS_1": "smartchest",
    }
    assert (tmp_path / "env-files" / ".env.lyon-sud").stat().st_mode & 0o077 == 0
    # pacsor reads it back, through .env, as the site's settings.
    settings = load_settings(environ={}, dotenv=link)
    assert [core.name for core in settings.cores] == ["default", "chest"]
    assert settings.hl7.enable and settings.hl7.ris_port == 2575
    assert settings.hl7.language == "FR" and settings.hl7.receiving_application == "RADRIS"

    shown = pacsor_cli("setup", "--show", cwd=tmp_path)
    assert shown.returncode == 0
    assert "TOKEN=********" in shown.stdout and "TOKEN_1=********" in shown.stdout
    assert "s3cret-key" not in shown.stdout and "other-key" not in shown.stdout
    assert "PACS_IP=10.1.2.3" in shown.stdout


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
    # The settings pacsor itself reads from them start every handler.
    settings = load_settings(environ=services["dispatcher"]["environment"], dotenv=None)
    assert [str(d) for d in settings.all_destinations()] == ["DEMOPACS@demo-pacs:11112"]
