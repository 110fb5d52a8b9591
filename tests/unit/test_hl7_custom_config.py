"""Named configurations and templates read from a directory, checked before use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsor.config.hl7 import Hl7Settings
from pacsor.hl7.custom_config import (
    CustomConfigError,
    combine,
    effective,
    read_config,
    read_template,
)

BASE = Hl7Settings(ris_ip="10.0.0.1", language="EN")


def write(directory: Path, name: str, body: object, template: bool = False) -> None:
    folder = directory / "templates" if template else directory
    folder.mkdir(parents=True, exist_ok=True)
    text = body if isinstance(body, str) else json.dumps(body)
    (folder / f"{name}.json").write_text(text)


def test_a_configuration_wins_over_the_environment(tmp_path: Path) -> None:
    write(
        tmp_path,
        "site-a",
        {
            "settings": {"HL7_LANGUAGE": "FR", "HL7_INCLUDE_PV1": False, "RIS_TIMEOUT": 3},
            "template": {"fields": {"OBR-13": "$study_description"}},
        },
    )
    loaded = read_config(tmp_path, "site-a")
    settings, template = effective(BASE, loaded)
    assert (settings.language, settings.include_pv1, settings.ris_timeout_seconds) == (
        "FR",
        False,
        3.0,
    )
    assert settings.ris_ip == "10.0.0.1"  # what the configuration does not set stays
    assert template is not None and template.fields[0].segment == "OBR"


def test_a_template_alone_keeps_the_loaded_settings(tmp_path: Path) -> None:
    write(tmp_path, "fr", {"settings": {"HL7_LANGUAGE": "FR"}})
    write(tmp_path, "no-pv1", {"omit": ["PV1"]}, template=True)
    state = combine(None, read_config(tmp_path, "fr"))
    state = combine(state, read_template(tmp_path, "no-pv1"))
    settings, template = effective(BASE, state)
    assert settings.language == "FR"
    assert template is not None and template.omit == ("PV1",)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"settings": {"HL7_LANGUAGE": "DE"}}, "HL7_LANGUAGE"),
        ({"settings": {"TOKEN": "x"}}, "TOKEN: not an HL7 setting"),
        ({"template": {"fields": {"MSH-9": "ADT^A01^ADT_A01"}}}, "ORU_R01"),
        ({"template": {"fields": {"PID-7": "yesterday"}}}, "strict"),
        ({"template": {"exec": "import os"}}, "unknown field"),
        ({"shell": "rm -rf /"}, "unknown field"),
        ("{not json", "configuration 'bad'"),
    ],
)
def test_a_bad_configuration_is_refused_with_the_reason(
    tmp_path: Path, body: object, error: str
) -> None:
    write(tmp_path, "bad", body)
    with pytest.raises(CustomConfigError, match=error):
        effective(BASE, read_config(tmp_path, "bad"))


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", ".hidden", "x" * 65])
def test_names_cannot_leave_the_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(CustomConfigError, match="letters, digits"):
        read_config(tmp_path, name)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CustomConfigError) as caught:
        read_config(tmp_path, "nothing")
    assert caught.value.not_found
