"""Configuration: defaults, .env, and one clear line for a bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsor.config import ConfigError, Destination, load_settings
from pacsor.config.hl7 import as_variables, load_hl7_settings, with_overrides
from tests.harness import pacsor_cli


def test_defaults() -> None:
    s = load_settings({}, dotenv=None)
    assert (s.milvue_aet, s.port, s.config_profile, s.study_quiet_seconds) == (
        "MILVUE",
        1040,
        "WithSC",
        10.0,
    )
    assert s.inference_commands == ("smarturgences", "smartxpert")
    assert s.all_destinations() == ()
    assert (s.max_associations, s.scp_store_timeout_seconds) == (32, 5.0)


def test_environment_and_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# site settings\nPACS_IP=10.0.0.5\nPACS_AET='MAINPACS'\nPORT=2000\n")
    s = load_settings(
        {"PORT": "3000", "DESTINATIONS": "ARCH@archive:104, VIEW@viewer:11112"}, dotenv=dotenv
    )
    assert s.port == 3000  # the environment wins over .env
    assert s.all_destinations() == (
        Destination("MAINPACS", "10.0.0.5", 104),
        Destination("ARCH", "archive", 104),
        Destination("VIEW", "viewer", 11112),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("MILVUE_AET", "A_TITLE_LONGER_THAN_16"),
        ("CONFIG_PROFILE", "Everything"),
        ("STUDY_QUIET_SECONDS", "-1"),
        ("API_URL", "ftp://x"),
        ("DESTINATIONS", "PACS@host"),
        ("NATS_URL", "localhost:4222"),
        ("INFERENCE_COMMANDS", ","),
        ("MAX_ASSOCIATIONS", "0"),
        ("SCP_STORE_TIMEOUT_SECONDS", "soon"),
    ],
)
def test_bad_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        load_settings({name: value}, dotenv=None)


def test_cli_stops_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = pacsor_cli("up", cwd=tmp_path, PORT="not-a-port")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pacsor: PORT: expected an integer, got 'not-a-port'"
    ]


def test_cli_requires_a_token_for_the_uploader(tmp_path: Path) -> None:
    result = pacsor_cli("run", "uploader", cwd=tmp_path, TOKEN="")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pacsor: TOKEN: not set; the Milvue API needs an API key"
    ]


def test_the_example_env_file_loads() -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    settings = load_settings({}, dotenv=example)
    assert settings.milvue_aet == "MILVUE" and settings.pacs_port == 104


def test_several_cores_take_what_they_do_not_set_from_the_first() -> None:
    s = load_settings(
        {
            "TOKEN": "prod-key",
            "PACS_IP": "10.0.0.5",
            "API_URL_1": "https://preprod.example/",
            "TOKEN_1": "preprod-key",
            "CORE_NAME_1": "preprod",
            "INFERENCE_COMMANDS_1": "smartchest",
            "DESTINATIONS_1": "same-as-first",
            "API_URL_2": "https://research.example",
            "DESTINATIONS_2": "RESEARCH@research:104",
        },
        dotenv=None,
    )
    first, preprod, research = s.cores
    assert (first.name, first.token, first.destinations) == (
        "default",
        "prod-key",
        (Destination("PACS", "10.0.0.5", 104),),
    )
    assert (preprod.name, preprod.api_url, preprod.token) == (
        "preprod",
        "https://preprod.example",
        "preprod-key",
    )
    assert preprod.inference_commands == ("smartchest",)
    assert preprod.destinations == first.destinations  # said so: the unsuffixed PACS
    assert (research.name, research.token) == ("core2", "")
    assert research.inference_commands == first.inference_commands
    assert research.destinations == (Destination("RESEARCH", "research", 104),)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"API_URL_1": "ftp://x"}, "API_URL_1: expected an http:// or https:// URL, got 'ftp://x'"),
        (
            {"API_URL_1": "https://a.example", "DESTINATIONS_1": "X@h:0"},
            "DESTINATIONS_1: expected an integer >= 1, got 'X@h:0'",
        ),
        (
            {"API_URL_1": "https://a.example", "CORE_NAME_1": "default"},
            "CORE_NAME_1: two cores are named 'default'; names must differ",
        ),
        (
            {"API_URL_1": "https://a.example", "CORE_NAME_1": "precert"},
            "DESTINATIONS_1: not set; core 'precert' must name its own destinations, "
            "or share the first core's with DESTINATIONS_1=same-as-first",
        ),
        (
            {"DESTINATIONS": "same-as-first"},
            "DESTINATIONS: expected AET@host:port or AET@host:port?tls, got 'same-as-first'",
        ),
        (
            {"DESTINATIONS": "A@h:104?ssl"},
            "DESTINATIONS: expected AET@host:port or AET@host:port?tls, got 'A@h:104?ssl'",
        ),
        (
            {"API_URL_1": "https://a.example", "DESTINATIONS_1": "X@h:1", "HL7_CORES": "core2"},
            "HL7_CORES: 'core2' is not a core; the cores are default, core1",
        ),
        (
            {"DICOM_TLS_CERT": "pacsor.pem"},
            "DICOM_TLS_KEY: not set; a client certificate needs both CERT and KEY",
        ),
        (
            {"CONFIG_PROFILE": "Everything"},
            "CONFIG_PROFILE: expected one of All, Default, "
            "WithRF, WithSC, WithSCRF, got 'Everything'",
        ),
    ],
)
def test_a_bad_core_setting_is_one_line_naming_it(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env, dotenv=None)
    assert str(raised.value) == line


def test_destinations_marked_tls_and_the_cores_that_send_hl7() -> None:
    s = load_settings(
        {
            "PACS_IP": "10.0.0.5",
            "DESTINATIONS": "ARCH@archive:2762?tls",
            "API_URL_1": "https://precert.example",
            "CORE_NAME_1": "precert",
            "DESTINATIONS_1": "TESTPACS@test-pacs:104",
            "API_URL_2": "https://research.example",
            "CORE_KIND_2": "tcr",
        },
        dotenv=None,
    )
    first, precert, report = s.cores
    assert first.destinations[1] == Destination("ARCH", "archive", 2762, tls=True)
    assert str(first.destinations[1]) == "ARCH@archive:2762"  # its name, whatever the transport
    assert first.destinations[1].label == "ARCH@archive:2762?tls"
    assert precert.destinations == (Destination("TESTPACS", "test-pacs", 104),)
    assert report.destinations == ()  # a report core has no result objects to send
    assert s.ris_cores == {"default"}  # the first core only, unless HL7_CORES says otherwise
    both = load_settings(
        {
            "API_URL_1": "https://p.example",
            "DESTINATIONS_1": "same-as-first",
            "HL7_CORES": "default,core1",
        },
        dotenv=None,
    )
    assert both.ris_cores == {"default", "core1"}


def test_cli_requires_a_token_for_every_core(tmp_path: Path) -> None:
    result = pacsor_cli(
        "run",
        "uploader",
        cwd=tmp_path,
        TOKEN="k",
        API_URL_1="https://b.example",
        TOKEN_1="",
        DESTINATIONS_1="same-as-first",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pacsor: TOKEN_1: not set; the Milvue API needs an API key"
    ]


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"HL7_LANGUAGE": "DE"}, "HL7_LANGUAGE: expected one of EN, FR, got 'DE'"),
        ({"HL7_RIS_PORT": "0"}, "HL7_RIS_PORT: expected an integer >= 1, got '0'"),
        ({"RIS_TIMEOUT": "soon"}, "RIS_TIMEOUT: expected a number, got 'soon'"),
        ({"HL7_ENABLE": "maybe"}, "HL7_ENABLE: expected true or false, got 'maybe'"),
        (
            {"HL7_SENDING_FACILITY": "A|B"},
            "HL7_SENDING_FACILITY: HL7 delimiters |^~\\& and control characters are not "
            "allowed, got 'A|B'",
        ),
        (
            {"HL7_CUSTOM_DIR": "/etc/pacsor", "LOAD_CONFIG_AT_INIT": "../secrets"},
            "LOAD_CONFIG_AT_INIT: a file name of letters, digits, _ . -, got '../secrets'",
        ),
        (
            {"MEASURE_INFERENCE_COMMAND": "smartchest"},
            "MEASURE_INFERENCE_COMMAND: expected one of measures, smartxpert, got 'smartchest'",
        ),
        (
            {"WEBPS_PROVIDERS": "acme,Other"},
            "WEBPS_PROVIDERS: lower-case letters, digits and '-', got 'acme,Other'",
        ),
        (
            {"WEBPS_PROVIDERS": "acme,acme"},
            "WEBPS_PROVIDERS: a provider is named twice in 'acme,acme'",
        ),
        (
            {"HL7_ENABLE": "true"},
            "HL7_RIS_IP: not set; HL7_ENABLE=true needs the RIS address",
        ),
        (
            {"TCR_API_URL": "ftp://x"},
            "TCR_API_URL: expected an http:// or https:// URL, got 'ftp://x'",
        ),
        ({"UPLOAD_CONCURRENCY": "0"}, "UPLOAD_CONCURRENCY: expected an integer >= 1, got '0'"),
    ],
)
def test_a_bad_hl7_or_upload_setting_is_one_line_naming_it(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env, dotenv=None)
    assert str(raised.value) == line


def test_hl7_settings_read_as_every_other_setting() -> None:
    s = load_settings(
        {
            "HL7_ENABLE": "yes",  # yes/no and on/off, for every true-or-false setting
            "NO_DUPLICATE_UPLOAD": "off",
            "HL7_RIS_IP": "ris.example",
            "HL7_LANGUAGE": "fr",  # the case of a fixed choice does not matter
            "HL7_TCR_OUT_FORMAT": "plain",
            "HL7_INCLUDE_TCR": "1",
            "TCR_API_URL": "https://reports.example/",
            "WEBPS_PROVIDERS": "acme, radco",
            "UPLOAD_CONCURRENCY": "16",
        },
        dotenv=None,
    )
    hl7 = s.hl7
    assert (hl7.enable, hl7.ris_ip, hl7.language, hl7.tcr_out_format) == (
        True,
        "ris.example",
        "FR",
        "PLAIN",
    )
    assert (hl7.include_tcr, hl7.tcr_api_url) == (True, "https://reports.example")
    assert hl7.webps_providers == ("acme", "radco")
    assert (s.no_duplicate_upload, s.upload_concurrency) == (False, 16)


def test_hl7_variables_give_back_the_same_settings() -> None:
    hl7 = load_settings(
        {
            "HL7_ENABLE": "true",
            "HL7_RIS_IP": "ris",
            "WEBPS_ENABLE": "true",
            "WEBPS_PROVIDERS": "a,b",
        },
        dotenv=None,
    ).hl7
    assert load_hl7_settings(as_variables(hl7)) == hl7
    assert with_overrides(hl7, {"HL7_LANGUAGE": "FR"}).language == "FR"
    with pytest.raises(ConfigError, match=r"^HL7_COLOUR: not an HL7 setting$"):
        with_overrides(hl7, {"HL7_COLOUR": "blue"})


def test_start_up_refuses_an_extra_core_without_destinations_in_one_line(tmp_path: Path) -> None:
    result = pacsor_cli(
        "run",
        "dispatcher",
        cwd=tmp_path,
        TOKEN="k",
        PACS_IP="10.0.0.5",
        API_URL_1="https://precert.example",
        CORE_NAME_1="precert",
        TOKEN_1="k1",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pacsor: DESTINATIONS_1: not set; core 'precert' must name its own destinations, "
        "or share the first core's with DESTINATIONS_1=same-as-first"
    ]
