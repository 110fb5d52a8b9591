"""Every error pacsor raises on purpose, under one base that says whether to try again.

    PacsorError               retryable: may the same work succeed later?
    ├── StartupError          the process cannot start: one line, exit status 2
    │   └── ConfigError       a setting is missing or malformed (the line names it)
    ├── InvalidInput          what came from outside (DICOM, HL7, a template, a request) is
    │                         not what it must be: trying again cannot change it
    ├── UndeclaredEvent       a step returned an event its declaration does not list (a bug:
    │                         its NATS role would refuse the publish)
    └── TransientError        a peer or the broker is unavailable for now

The handler runner reads `retryable`: a PacsorError that is not retryable records the step's
failure at once; anything else is retried with the backoff until RETRY_MAX_ATTEMPTS (and a
lost JetStream connection for as long as it takes). Every layer may import this module; it
imports nothing.
"""

from __future__ import annotations


class PacsorError(Exception):
    """Base of pacsor's own errors."""

    @property
    def retryable(self) -> bool:
        """Whether the same work may succeed later."""
        return False


class StartupError(PacsorError):
    """What the process needs in order to start is not there (NATS, a port, a file)."""


class ConfigError(StartupError, ValueError):
    """A setting is missing or malformed; the message starts with the variable's name."""


class InvalidInput(PacsorError, ValueError):
    """Input from outside is not what it must be; the message says where and why."""


class UndeclaredEvent(PacsorError):
    """A step returned an event type it does not declare it emits; nothing of it is published."""


class TransientError(PacsorError):
    """A peer or the broker cannot do it now; the same work may succeed later."""

    @property
    def retryable(self) -> bool:
        return True
