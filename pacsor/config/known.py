"""Which variables pacsor knows, and one line for each one it would otherwise ignore.

A site file (`.env`, `env-files/.env.<site>`) holds pacsor's settings only, so every name in
it must be one pacsor reads: a name it does not know is a typo or a setting of the original
gateway that needs `pacsor migrate`, and is named with the closest known name. The process
environment also holds the system's own variables (PATH, HOSTNAME, ...), so there only the
names that look like pacsor's are named: a numbered variant of a known name, a name of the
original gateway, or a near miss of a known name.

Numbered variables describe cores 1, 2, ... (API_URL_1, TOKEN_1, ...); core n exists when
API_URL_n is set and every core before it exists, so API_URL_2 without API_URL_1, or TOKEN_3
without API_URL_3, would be silently dropped: they are named too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from pacsor.config.hl7 import VARIABLE_NAMES as HL7_VARIABLES

# Read by pacsor outside the settings model (the CLI's demo, the API simulator), or by
# docker compose from the same site file (it is compose's --env-file too).
OTHER_VARIABLES = frozenset(
    {
        "PACSOR_ENV_FILE",
        "PACSOR_IMAGE",
        "PACSOR_VERSION",
        "PACSOR_PULL_POLICY",
        "PACSOR_NATS_SECRETS",
        "DICOM_PUBLISH_ADDRESS",
        "DICOM_TLS_FOLDER",
        "DEMO_PACS_PORT",
        "DEMO_RIS_PORT",
        "COMPOSE_PROFILES",
        "COMPOSE_PROJECT_NAME",
        "SIMULATOR_RUNNING_POLLS",
        "SIMULATOR_UPLOAD_FAULTS",
        "SIMULATOR_RESULT_FAULTS",
        "SIMULATOR_PUT_FAULTS",
        "SIMULATOR_STATUS_FAULTS",
        "SIMULATOR_ALWAYS_FAIL",
        "SIMULATOR_NOT_READY_RESULTS",
        "SIMULATOR_SIGNED_URL",
        "SIMULATOR_OUTCOME",
        "SIMULATOR_LATENCY_SECONDS",
        "SIMULATOR_DROP_CONNECTIONS",
    }
)

# Names of the original gateway that pacsor spells otherwise: what to write instead.
ORIGINAL_NAMES: dict[str, str] = {
    "CALLBACK_URLS": "PACS_IP, PACS_PORT, PACS_AET and DESTINATIONS",
    "DICOM_FILTER": "DICOM_FILTERS",
    "MEASURES_INFERENCE_COMMAND": "MEASURE_INFERENCE_COMMAND",
}
# Numbered names of the original gateway: core n's PACS are DESTINATIONS_n in pacsor.
ORIGINAL_NUMBERED = ("CALLBACK_URLS", "PACS_IP", "PACS_PORT", "PACS_AET")

_NUMBERED = re.compile(r"^([A-Z][A-Z0-9_]*?)_(\d+)$")


def _core_count(env: Mapping[str, str]) -> int:
    count = 0
    while env.get(f"API_URL_{count + 1}", "").strip():
        count += 1
    return count


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (closest known name: {close[0]})" if close else ""


def problem_of(
    name: str,
    env: Mapping[str, str],
    top_level: frozenset[str],
    per_core: frozenset[str],
) -> str | None:
    """Why `name` would be ignored, or None when pacsor reads it."""
    known = top_level | HL7_VARIABLES | OTHER_VARIABLES
    if name in known:
        return None
    cores = _core_count(env)
    numbered = _NUMBERED.match(name)
    if numbered:
        base, n = numbered.group(1), int(numbered.group(2))
        if base in per_core:
            if 1 <= n <= cores:
                return None
            if n == 0:
                return f"{name}: cores are numbered from 1; the first core is {base} unsuffixed"
            if base == "API_URL":
                return (
                    f"{name}: core {n} without core {cores + 1} (API_URL_{cores + 1} is not "
                    f"set); cores are numbered 1, 2, ... without a gap"
                )
            return f"{name}: there is no core {n} (API_URL_{n} is not set or comes after a gap)"
        if base in ORIGINAL_NUMBERED:
            return (
                f"{name}: a setting of the original gateway; core {n}'s PACS are "
                f"DESTINATIONS_{n}=AET@host:port,... (`pacsor migrate` writes them)"
            )
        if base in known:
            return f"{name}: {base} is not set per core; there is no {name}"
    if name in ORIGINAL_NAMES:
        return (
            f"{name}: a setting of the original gateway; pacsor reads "
            f"{ORIGINAL_NAMES[name]} (`pacsor migrate` writes them)"
        )
    suffixed = {f"{base}_{n}" for base in per_core for n in range(1, cores + 1)}
    return f"{name}: not a pacsor setting{_hint(name, known | suffixed)}"


def looks_like_ours(name: str, top_level: frozenset[str], per_core: frozenset[str]) -> bool:
    """Whether a variable of the process environment is meant for pacsor."""
    known = top_level | HL7_VARIABLES | OTHER_VARIABLES
    numbered = _NUMBERED.match(name)
    if numbered and (numbered.group(1) in known or numbered.group(1) in ORIGINAL_NUMBERED):
        return True
    if name in ORIGINAL_NAMES:
        return True
    return bool(difflib.get_close_matches(name, list(known), n=1, cutoff=0.88))


def unknown_variables(
    site_file: Mapping[str, str],
    environ: Mapping[str, str],
    top_level: frozenset[str],
    per_core: frozenset[str],
) -> list[str]:
    """One line per variable that pacsor would ignore: every unknown name of the site file,
    and the names of the environment that look meant for pacsor."""
    env = {**site_file, **environ}
    lines: list[str] = []
    for name in sorted(set(site_file) | set(environ)):
        if name not in site_file and not looks_like_ours(name, top_level, per_core):
            continue
        problem = problem_of(name, env, top_level, per_core)
        if problem is not None:
            lines.append(problem)
    return lines
