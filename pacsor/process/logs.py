"""Logs on stderr: short text lines for people, or one JSON object per line for collectors.

LOG_FORMAT chooses (`text`, `json`); unset, a terminal gets text and anything else JSON. Each
line names its study wherever there is one (shortened in text), and every line pynetdicom
writes about an association names its peer (AE@host:port), which pynetdicom's own lines omit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from pacsor.config.variables import mask_text, masked
from pacsor.domain.event_text import short_uid

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_LEVELS = {"WARNING": "WARN", "CRITICAL": "CRIT"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own facts; secrets by name, and passwords inside URLs, masked."""
    return {
        key: masked(value, key)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


# What a library says about received data may quote the sender's bytes (up to 64 KiB).
LONGEST_MESSAGE = 300


class ShortMessages(logging.Filter):
    """Cut a message short, for loggers that quote what a peer sent (pydicom, warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > LONGEST_MESSAGE:
            record.msg = message[:LONGEST_MESSAGE] + f"... ({len(message)} characters)"
            record.args = None
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_text(record.getMessage()),
            **_extras(record),
        }
        if record.exc_info:
            line["exception"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextLines(logging.Formatter):
    """`14:02:11 INFO  Uploaded         1.2.826.…498.12  default attempt 1, 3 instances`.

    An event's line is its name, its study and what it says (`outcome`); any other line is
    its message, its study and its other facts as key=value.
    """

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = _LEVELS.get(record.levelname, record.levelname)
        facts = _extras(record)
        study = facts.pop("study", None)
        parts = [f"{when} {level:<5}", f"{mask_text(record.getMessage()):<16}"]
        if study:
            parts.append(short_uid(str(study)))
        if "outcome" in facts:  # an event: what it says is the line
            parts.append(str(facts["outcome"]))
            if facts.get("duplicate"):
                parts.append("(already recorded)")
        else:
            parts.extend(f"{key}={_text(value)}" for key, value in facts.items())
        line = "  ".join(parts)
        if record.exc_info:
            line += "\n" + mask_text(self.formatException(record.exc_info))
        return line


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    text = str(value)
    return repr(text) if " " in text and len(text) < 80 else text


# The DICOM peer that the code running now talks to (pacsor's own calls into pynetdicom,
# which log from the calling thread without naming it).
_PEER: ContextVar[str | None] = ContextVar("pacsor_peer", default=None)


@contextlib.contextmanager
def naming_peer(peer: str) -> Iterator[None]:
    """pynetdicom's lines logged inside this block name `peer` (AE@host:port)."""
    token = _PEER.set(peer)
    try:
        yield
    finally:
        _PEER.reset(token)


class NamePeer(logging.Filter):
    """Adds `peer` (AE@host:port) to pynetdicom's lines, from the association's own thread.

    pynetdicom logs from the association's threads (the Association, and its DUL provider,
    which holds it as `assoc`); the peer is the acceptor when pacsor asked for the
    association, the requestor when it answered one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom") and "peer" not in record.__dict__:
            peer = association_peer(threading.current_thread()) or _PEER.get()
            if peer:
                record.peer = peer
        return True


def association_peer(thread: object) -> str | None:
    assoc = getattr(thread, "assoc", None)
    if assoc is None and hasattr(thread, "acceptor") and hasattr(thread, "is_requestor"):
        assoc = thread
    if assoc is None:
        return None
    try:
        user = assoc.acceptor if assoc.is_requestor else assoc.requestor
        return f"{user.ae_title}@{user.address}:{user.port}"
    except Exception:  # a half-built association: no peer to name, the line stays as it is
        return None


def chosen_format(setting: Literal["text", "json"] | None) -> Literal["text", "json"]:
    if setting is not None:
        return setting
    return "text" if sys.stderr.isatty() else "json"


def configure(level: str, log_format: Literal["text", "json"] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextLines() if chosen_format(log_format) == "text" else JsonLines())
    handler.addFilter(NamePeer())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO; its association summaries are enough.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # pydicom's warnings about received datasets go to this log, not raw to stderr.
    logging.captureWarnings(True)
    for name in ("py.warnings", "pydicom"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, ShortMessages) for f in logger.filters):
            logger.addFilter(ShortMessages())
