"""How the simulator behaves: authentication, processing delay and injected faults."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

# The version string the simulator reports in every status answer.
VERSION = "pacsor-simulator-1.0"


class SimulatorSettings(msgspec.Struct, frozen=True, kw_only=True):
    # When set, requests without this `x-goog-meta-owner` are answered 403.
    token: str | None = None
    # The status of a study answers "running" this many times, then "done".
    running_polls: int = 2
    # HTTP statuses answered, in order, to the first upload requests (fault injection).
    upload_faults: tuple[int, ...] = ()
    # Likewise for the first result (GET /v3/studies/{uid}) requests.
    result_faults: tuple[int, ...] = ()
    # Per study, the first result requests after "done" still answer "running".
    not_ready_results: int = 0
    # Seconds an accepted upload takes before it is answered: keeps uploads in flight.
    upload_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.running_polls < 0:
            raise ValueError(f"running_polls must be >= 0, got {self.running_polls}")
        if not self.upload_seconds >= 0:
            raise ValueError(f"upload_seconds must be >= 0, got {self.upload_seconds}")
        if self.not_ready_results < 0:
            raise ValueError(f"not_ready_results must be >= 0, got {self.not_ready_results}")
        for name, faults in (
            ("upload_faults", self.upload_faults),
            ("result_faults", self.result_faults),
        ):
            for status in faults:
                if not 400 <= status <= 599:
                    raise ValueError(f"{name}: {status} is not an HTTP error status (400-599)")


def _count(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must be 0 or more, got {value}")
    return value


def _statuses(name: str, raw: str) -> tuple[int, ...]:
    statuses: list[int] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            status = int(item)
        except ValueError:
            raise ValueError(f"{name}: expected HTTP statuses like 429,500, got {raw!r}") from None
        if not 400 <= status <= 599:
            raise ValueError(f"{name}: {status} is not an HTTP error status (400-599)")
        statuses.append(status)
    return tuple(statuses)


def settings_from_env(environ: Mapping[str, str] | None = None) -> SimulatorSettings:
    """Settings from TOKEN and SIMULATOR_* variables; a bad value raises ValueError naming it.

    TOKEN (the same variable the gateway sends as its API key; empty means no check),
    SIMULATOR_RUNNING_POLLS, SIMULATOR_UPLOAD_FAULTS and SIMULATOR_RESULT_FAULTS (comma
    separated HTTP statuses), SIMULATOR_NOT_READY_RESULTS.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        raw = env.get(name)
        return raw.strip() if raw is not None and raw.strip() else None

    kwargs: dict[str, object] = {}
    if (token := get("TOKEN")) is not None:
        kwargs["token"] = token
    if (raw := get("SIMULATOR_RUNNING_POLLS")) is not None:
        kwargs["running_polls"] = _count("SIMULATOR_RUNNING_POLLS", raw)
    if (raw := get("SIMULATOR_NOT_READY_RESULTS")) is not None:
        kwargs["not_ready_results"] = _count("SIMULATOR_NOT_READY_RESULTS", raw)
    if (raw := get("SIMULATOR_UPLOAD_FAULTS")) is not None:
        kwargs["upload_faults"] = _statuses("SIMULATOR_UPLOAD_FAULTS", raw)
    if (raw := get("SIMULATOR_RESULT_FAULTS")) is not None:
        kwargs["result_faults"] = _statuses("SIMULATOR_RESULT_FAULTS", raw)
    return msgspec.structs.replace(SimulatorSettings(), **kwargs)
