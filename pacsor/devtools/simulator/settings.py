"""How the simulator behaves: authentication, processing delay, outcome and injected faults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

# The version string the simulator reports in every status answer.
VERSION = "pacsor-simulator-1.0"

SignedUrlMode = Literal["accept", "require", "refuse"]
Outcome = Literal["done", "error", "empty", "forbidden"]
# The transfer syntax of the result objects: as the API sends them (explicit), or compressed
# losslessly, as some AI products and archives do (RLE, JPEG 2000).
ResultSyntax = Literal["explicit", "rle", "jpeg2000"]
RESULT_SYNTAXES: tuple[ResultSyntax, ...] = ("explicit", "rle", "jpeg2000")
SIGNED_URL_MODES: tuple[SignedUrlMode, ...] = ("accept", "require", "refuse")
OUTCOMES: tuple[Outcome, ...] = ("done", "error", "empty", "forbidden")


class SimulatorSettings(msgspec.Struct, frozen=True, kw_only=True):
    # When set, requests without this `x-goog-meta-owner` are answered 403.
    token: str | None = None
    # The status of a study answers "running" this many times, then "done".
    running_polls: int = 2
    # HTTP statuses answered, in order, to the first upload requests (fault injection).
    upload_faults: tuple[int, ...] = ()
    # Likewise for the first result (GET /v3/studies/{uid}) requests.
    result_faults: tuple[int, ...] = ()
    # Likewise for the first PUTs to signed upload URLs.
    put_faults: tuple[int, ...] = ()
    # Likewise for the first status polls.
    status_faults: tuple[int, ...] = ()
    # When set, every API request is answered with this HTTP status (a core that is down).
    always_fail: int | None = None
    # Per study, the first result requests after "done" still answer "running".
    not_ready_results: int = 0
    # Signed URLs: "accept" both ways of uploading, "require" signed_url=true (a cloud
    # environment that takes no full instance in the POST), "refuse" it (on-premise).
    signed_url: SignedUrlMode = "accept"
    # What the inference ends in: "done" (results), "error" (the status says error),
    # "empty" (no result objects), "forbidden" (the results are refused).
    outcome: Outcome = "done"
    # Seconds every API answer waits before being sent (a slow core).
    latency_seconds: float = 0.0
    # The first N upload requests (POST /v3/studies or PUT to a signed URL) have their
    # connection cut in the middle of the answer, before anything is stored.
    drop_connections: int = 0
    # Seconds an accepted upload takes before it is answered: keeps uploads in flight.
    upload_seconds: float = 0.0
    # The transfer syntax the result objects are encoded in.
    result_syntax: ResultSyntax = "explicit"

    def __post_init__(self) -> None:
        if self.running_polls < 0:
            raise ValueError(f"running_polls must be >= 0, got {self.running_polls}")
        if not self.upload_seconds >= 0:
            raise ValueError(f"upload_seconds must be >= 0, got {self.upload_seconds}")
        if self.not_ready_results < 0:
            raise ValueError(f"not_ready_results must be >= 0, got {self.not_ready_results}")
        if self.drop_connections < 0:
            raise ValueError(f"drop_connections must be >= 0, got {self.drop_connections}")
        if not self.latency_seconds >= 0:
            raise ValueError(f"latency_seconds must be >= 0, got {self.latency_seconds}")
        if self.signed_url not in SIGNED_URL_MODES:
            raise ValueError(f"signed_url must be one of {SIGNED_URL_MODES}")
        if self.result_syntax not in RESULT_SYNTAXES:
            raise ValueError(f"result_syntax must be one of {RESULT_SYNTAXES}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        if self.always_fail is not None and not 400 <= self.always_fail <= 599:
            raise ValueError(f"always_fail: {self.always_fail} is not an HTTP error status")
        for name, faults in (
            ("upload_faults", self.upload_faults),
            ("result_faults", self.result_faults),
            ("put_faults", self.put_faults),
            ("status_faults", self.status_faults),
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


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"{name}: must be 0 or more, got {raw!r}")
    return value


def settings_from_env(environ: Mapping[str, str] | None = None) -> SimulatorSettings:
    """Settings from TOKEN and SIMULATOR_* variables; a bad value raises ValueError naming it.

    TOKEN (the same variable the gateway sends as its API key; empty means no check),
    SIMULATOR_RUNNING_POLLS, SIMULATOR_UPLOAD_FAULTS, SIMULATOR_RESULT_FAULTS,
    SIMULATOR_PUT_FAULTS and SIMULATOR_STATUS_FAULTS (comma separated HTTP statuses),
    SIMULATOR_ALWAYS_FAIL (one status), SIMULATOR_NOT_READY_RESULTS, SIMULATOR_SIGNED_URL
    (accept, require, refuse), SIMULATOR_OUTCOME (done, error, empty, forbidden),
    SIMULATOR_LATENCY_SECONDS, SIMULATOR_DROP_CONNECTIONS, SIMULATOR_RESULT_SYNTAX (explicit,
    rle, jpeg2000).
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
    if (raw := get("SIMULATOR_PUT_FAULTS")) is not None:
        kwargs["put_faults"] = _statuses("SIMULATOR_PUT_FAULTS", raw)
    if (raw := get("SIMULATOR_STATUS_FAULTS")) is not None:
        kwargs["status_faults"] = _statuses("SIMULATOR_STATUS_FAULTS", raw)
    if (raw := get("SIMULATOR_ALWAYS_FAIL")) is not None:
        statuses = _statuses("SIMULATOR_ALWAYS_FAIL", raw)
        if len(statuses) != 1:
            raise ValueError(f"SIMULATOR_ALWAYS_FAIL: expected one HTTP status, got {raw!r}")
        kwargs["always_fail"] = statuses[0]
    if (raw := get("SIMULATOR_SIGNED_URL")) is not None:
        kwargs["signed_url"] = _choice("SIMULATOR_SIGNED_URL", raw, SIGNED_URL_MODES)
    if (raw := get("SIMULATOR_OUTCOME")) is not None:
        kwargs["outcome"] = _choice("SIMULATOR_OUTCOME", raw, OUTCOMES)
    if (raw := get("SIMULATOR_LATENCY_SECONDS")) is not None:
        kwargs["latency_seconds"] = _seconds("SIMULATOR_LATENCY_SECONDS", raw)
    if (raw := get("SIMULATOR_DROP_CONNECTIONS")) is not None:
        kwargs["drop_connections"] = _count("SIMULATOR_DROP_CONNECTIONS", raw)
    if (raw := get("SIMULATOR_RESULT_SYNTAX")) is not None:
        kwargs["result_syntax"] = _choice("SIMULATOR_RESULT_SYNTAX", raw, RESULT_SYNTAXES)
    return msgspec.structs.replace(SimulatorSettings(), **kwargs)
