"""`pacsor migrate` as a site runs it: idempotent, never overwriting without --force; and
start-up and `pacsor check` stopping on a variable pacsor would ignore."""

from __future__ import annotations

import shutil
from pathlib import Path

from pacsor.config import read_dotenv
from tests.harness import pacsor_cli

ORIGINAL = Path(__file__).parent / "fixtures" / "original"


def test_the_command_is_idempotent_and_overwrites_only_when_told(tmp_path: Path) -> None:
    original = tmp_path / "original"
    shutil.copytree(ORIGINAL / "multi-core", original, symlinks=True)
    project = tmp_path / "pacsor"
    first = pacsor_cli("migrate", str(original), "--project-dir", str(project), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-2] == "wrote env-files/.env.ch-annecy; .env now points to it"
    written = project / "env-files" / ".env.ch-annecy"
    assert (project / ".env").resolve() == written.resolve()
    before = written.read_text()

    again = pacsor_cli("migrate", str(original), "--project-dir", str(project), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == (
        "env-files/.env.ch-annecy is already this migration: unchanged"
    )
    assert written.read_text() == before

    # The site changed its file since: not replaced without --force.
    env = original / "env-files" / ".env.ch-annecy"
    env.write_text(env.read_text().replace("TOKEN=annecy-prod-key", "TOKEN=new-key"))
    refused = pacsor_cli("migrate", str(original), "--project-dir", str(project), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "pacsor: env-files/.env.ch-annecy exists and differs; --force replaces it"
    )
    assert written.read_text() == before
    forced = pacsor_cli(
        "migrate", str(original), "--project-dir", str(project), "--force", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr
    assert read_dotenv(written)["TOKEN"] == "new-key"
    # The original's own files are read, never written.
    assert (original / ".env").is_symlink()


def test_pacsor_check_reads_the_migrated_site(tmp_path: Path) -> None:
    migrated = pacsor_cli("migrate", str(ORIGINAL / "single-core"), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    # No setting is unknown: check goes on to its own checks (and fails on the absent NATS).
    checked = pacsor_cli("check", cwd=tmp_path, NATS_URL="nats://127.0.0.1:1")
    assert checked.stdout.splitlines()[0].startswith("FAIL  NATS nats://127.0.0.1:1: ")


def test_start_and_check_stop_on_an_unknown_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("API_URL=http://127.0.0.1:9\nAPI_URL_2=https://b.example\n")
    for command in ("check", "up"):
        result = pacsor_cli(command, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "pacsor: API_URL_2: core 2 without core 1 (API_URL_1 is not set); cores are "
            "numbered 1, 2, ... without a gap"
        ]
