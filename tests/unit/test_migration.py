"""`pacsor migrate`'s mapping (pure): an original gateway's site files in, pacsor's variables
and one line per setting out; and a variable pacsor would ignore named with the closest one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsor.config import ConfigError, Destination, load_settings, read_dotenv
from pacsor.config.migration import migrate
from pacsor.config.original import interpolate, read_original_site

ORIGINAL = Path(__file__).parents[1] / "fixtures" / "original"


def _lines(folder: str) -> list[str]:
    return [str(line) for line in migrate(read_original_site(ORIGINAL / folder)).lines]


def test_compose_interpolation_as_compose_does_it() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert interpolate("${A}-${B:-dflt}-${EMPTY:-e}-${EMPTY-f}-$A-$$A", env).value == (
        "x-dflt-e--x-$A"
    )
    assert interpolate("${A}${B}", env).sources == ("A", "B")


def test_single_core_site() -> None:
    site = read_original_site(ORIGINAL / "single-core")
    assert site.client == "chu-lyon"
    variables = migrate(site).variables
    settings = load_settings(environ=variables, dotenv=None)
    assert settings.all_destinations() == (Destination("LYONPACS", "10.20.0.15", 104),)
    assert (settings.api_url, settings.token) == ("https://api.milvue.com", "lyon-prod-key")
    assert settings.output_cleaning is True
    # DICOM_FILTER (the documentation's spelling), with compose's $$ as the one $ it means.
    assert variables["DICOM_FILTERS"].endswith('"pattern":"^SR$","should_match":true}]')
    assert "COMPOSE_PROFILES" not in variables  # no HL7: nothing more to start
    lines = _lines("single-core")
    assert lines[0] == (
        "renamed    CALLBACK_URLS -> PACS_IP, PACS_PORT, PACS_AET  "
        "(LYONPACS@10.20.0.15:104, from services storescu)"
    )
    assert "renamed    DICOM_FILTER -> DICOM_FILTERS" in lines
    assert "left out   CLIENT_NAME: the site's name: env-files/.env.<site>" in lines
    # One line per variable of the .env, none forgotten.
    named = {line.old for line in migrate(site).lines}
    assert set(read_dotenv(ORIGINAL / "single-core" / ".env")) <= named


def test_multi_core_site_with_two_pacs() -> None:
    variables = migrate(read_original_site(ORIGINAL / "multi-core")).variables
    first, second = load_settings(environ=variables, dotenv=None).cores
    assert first.destinations == (
        Destination("ANNECY_PACS", "10.1.1.20", 104),
        Destination("RESEARCH", "10.1.1.30", 11112),
    )
    assert (second.api_url, second.token) == ("https://precert.milvue.com", "annecy-precert-key")
    assert second.destinations == (Destination("RESEARCH", "10.1.1.30", 11112),)
    lines = _lines("multi-core")
    assert "renamed    PACS_IP_1 -> DESTINATIONS  (PACS_IP of service storescu-2)" in lines
    assert "renamed    CALLBACK_URLS_1 -> DESTINATIONS_1  " in "\n".join(lines)


def test_hl7_site_keeps_the_original_defaults_and_starts_the_hl7_service() -> None:
    variables = migrate(read_original_site(ORIGINAL / "hl7")).variables
    settings = load_settings(environ=variables, dotenv=None)
    hl7 = settings.hl7
    assert (hl7.enable, hl7.ris_ip, hl7.ris_port) == (True, "ris", 2575)
    assert (hl7.detection_command, hl7.measure_command) == ("detection", "measures")
    # Unset in the original's file: its defaults, not pacsor's, stay in force.
    assert (hl7.language, hl7.tcr_out_format) == ("FR", "B64")
    assert variables["COMPOSE_PROFILES"] == "hl7"
    lines = _lines("hl7")
    assert "renamed    MEASURES_INFERENCE_COMMAND -> MEASURE_INFERENCE_COMMAND" in lines
    assert [d.ae_title for d in settings.cores[1].destinations] == ["PACS_B"]


def test_a_core_numbered_after_a_gap_is_renumbered(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "API_URL=https://a.example\nTOKEN=a\nAPI_URL_2=https://b.example\nTOKEN_2=b\n"
        "PACS_IP_3=10.0.0.9\n"
    )
    migration = migrate(read_original_site(tmp_path))
    assert migration.variables == {
        "API_URL": "https://a.example",
        "TOKEN": "a",
        "API_URL_1": "https://b.example",
        "TOKEN_1": "b",
        # Said, as pacsor asks: where the original sent a core without CALLBACK_URLS_n.
        "DESTINATIONS_1": "same-as-first",
    }
    assert [str(line) for line in migration.lines][2:] == [
        "renamed    API_URL_2 -> API_URL_1  (cores are numbered without a gap)",
        "renamed    TOKEN_2 -> TOKEN_1  (cores are numbered without a gap)",
        "left out   PACS_IP_3: no CALLBACK_URLS names a storescu service that uses it",
        "added      DESTINATIONS_1=same-as-first  (core 1 had no CALLBACK_URLS: its results go "
        "where the first core's do)",
    ]


def test_a_callback_naming_an_undefined_service_stops_the_migration(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CALLBACK_URLS=http://storescu-9:8000\n")
    (tmp_path / "compose.yaml").write_text("services:\n  core:\n    image: x\n")
    with pytest.raises(ConfigError, match=r"^CALLBACK_URLS: 'http://storescu-9:8000' names"):
        migrate(read_original_site(tmp_path))


# --- No setting silently ignored --------------------------------------------------------


@pytest.mark.parametrize(
    ("site", "line"),
    [
        (
            "API_URL_2=https://b.example\n",
            "API_URL_2: core 2 without core 1 (API_URL_1 is not set); cores are numbered 1, 2, "
            "... without a gap",
        ),
        (
            "API_URL_1=https://b.example\nTOKEN_2=x\n",
            "TOKEN_2: there is no core 2 (API_URL_2 is not set or comes after a gap)",
        ),
        (
            "CALLBACK_URLS_1=http://storescu-2:8000\n",
            "CALLBACK_URLS_1: a setting of the original gateway; core 1's PACS are "
            "DESTINATIONS_1=AET@host:port,... (`pacsor migrate` writes them)",
        ),
        (
            "PACS_IP_1=10.0.0.1\n",
            "PACS_IP_1: a setting of the original gateway; core 1's PACS are "
            "DESTINATIONS_1=AET@host:port,... (`pacsor migrate` writes them)",
        ),
        (
            "CALLBACK_URLS=http://storescu:8000\n",
            "CALLBACK_URLS: a setting of the original gateway; pacsor reads PACS_IP, PACS_PORT, "
            "PACS_AET and DESTINATIONS (`pacsor migrate` writes them)",
        ),
        (
            "HL7_RIS_PROT=2575\n",
            "HL7_RIS_PROT: not a pacsor setting (closest known name: HL7_RIS_PORT)",
        ),
        ("PORT_1=1041\n", "PORT_1: PORT is not set per core; there is no PORT_1"),
    ],
)
def test_a_variable_pacsor_would_ignore_is_named(tmp_path: Path, site: str, line: str) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(site)
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={}, dotenv=dotenv)
    assert str(raised.value) == line


def test_the_environment_is_checked_for_names_meant_for_pacsor() -> None:
    # The system's own variables pass; a numbered or mistyped pacsor name does not.
    load_settings(environ={"PATH": "/usr/bin", "HOSTNAME": "x", "LANG": "C"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^API_URL_2: core 2 without core 1"):
        load_settings(environ={"API_URL_2": "https://b.example"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^MILVUE_AE: not a pacsor setting \(closest"):
        load_settings(environ={"MILVUE_AE": "X"}, dotenv=None)
