"""What keeps a browser from being used against the admin, and a guesser from finding its token.

    guard_middleware   every request: a Host the admin answers to (DNS rebinding), a state
                       change only from the same origin (or with a bearer header), and the
                       security headers on every response
    Sessions           the dashboard's cookie: a random id kept here, expiring, never the token
    SignInLimiter      wrong tokens per client address: after a few, that address waits

Both stores are bounded: the oldest entry goes when a new one would pass the cap.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from pacsor.config import Settings

# Names every admin answers to: a browser on the same machine.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A browser says where a request comes from; these two mean "this site" or "typed by a person".
SAME_SITE_FETCH = frozenset({"same-origin", "none"})

# The dashboard loads its own scripts and styles only, and may not be framed.
STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The API schema's pages (Litestar's renderers) load their script from a CDN and style inline.
SCHEMA_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net "
    "https://unpkg.com; style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net "
    "https://unpkg.com https://fonts.googleapis.com; font-src https://fonts.gstatic.com; "
    "img-src 'self' data: https://cdn.jsdelivr.net https://cdn.redoc.ly; connect-src 'self'; "
    "worker-src blob:; base-uri 'none'; frame-ancestors 'none'"
)
COMMON_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The host names the admin answers to: loopback, ADMIN_HOSTS, and ADMIN_HOST unless it
    is a wildcard address."""
    names = {*LOOPBACK_NAMES, *(h.lower() for h in settings.admin_hosts)}
    host = settings.admin_host.lower()
    if host not in {"0.0.0.0", "::", ""}:
        names.add(host)
    return frozenset(names)


def host_name(host_header: str) -> str:
    """`Host: example.org:7000` -> example.org; `[::1]:7000` -> ::1."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") > 1:  # a bare IPv6 address, as no browser sends it
        return value
    return value.partition(":")[0]


def is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cross_origin(headers: dict[str, str]) -> str:
    """Why a state-changing request is not from the dashboard itself ("" when it is).

    Sec-Fetch-Site, which no page can set, decides when the browser sends it; older browsers
    send Origin (Referrer-Policy same-origin keeps it from being "null" on the own forms)."""
    fetch_site = headers.get("sec-fetch-site", "")
    if fetch_site:
        return (
            "" if fetch_site in SAME_SITE_FETCH else f"a {fetch_site} request may not change state"
        )
    origin = headers.get("origin", "")
    if origin:
        if origin == "null":
            return "a request from an opaque origin may not change state"
        if urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            return f"a request from {origin[:100]} may not change state"
    return ""


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def guard_middleware(app: ASGIApp) -> ASGIApp:
    """Refuse a foreign Host (400) and a cross-origin state change (403); add the headers."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method: str = scope["method"]
        admin = scope["app"].state.admin
        headers = _headers(scope)
        name = host_name(headers.get("host", ""))
        path: str = scope["path"]
        csp = (SCHEMA_CSP if path.startswith("/schema") else STRICT_CSP).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", csp),
                    *COMMON_HEADERS,
                ]
            await send(message)

        if name not in admin.hosts:
            await _refuse(
                send_with_headers,
                421,
                f"this admin does not answer to the host {name[:100]!r}; "
                "add it to ADMIN_HOSTS if it is this admin's own name",
            )
            return
        if method in UNSAFE_METHODS and not _has_bearer(headers):
            why = cross_origin(headers)
            if why:
                await _refuse(send_with_headers, 403, f"cross-origin request refused: {why}")
                return
        await app(scope, receive, send_with_headers)

    return middleware


def _has_bearer(headers: dict[str, str]) -> bool:
    # A page of another site cannot set this header without a CORS preflight, which the
    # admin never answers: a request carrying it was not forged by a browser.
    return headers.get("authorization", "").lower().startswith("bearer ")


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = msgspec.json.encode({"status_code": status, "detail": detail})
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)


# --- sessions -------------------------------------------------------------------------------


@dataclass
class Sessions:
    """Signed-in browsers: a random id per sign-in, valid for `lifetime` seconds."""

    lifetime: float
    cap: int = 1000
    _expiry: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def open(self, now: float) -> str:
        session = secrets.token_urlsafe(32)
        self._expiry[session] = now + self.lifetime
        while len(self._expiry) > self.cap:
            self._expiry.popitem(last=False)
        return session

    def valid(self, session: str, now: float) -> bool:
        expiry = self._expiry.get(session)
        if expiry is None:
            return False
        if expiry <= now:
            del self._expiry[session]
            return False
        return True

    def close(self, session: str) -> None:
        self._expiry.pop(session, None)

    def __len__(self) -> int:
        return len(self._expiry)


@dataclass
class SignInLimiter:
    """At most `failures` wrong tokens per client address in `window` seconds; then that
    address waits until the oldest of them is older than the window, right token or not."""

    failures: int = 10
    window: float = 300.0
    cap: int = 4096
    _seen: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def wait(self, client: str, now: float) -> float:
        """Seconds `client` must wait before trying a token again (0: it may try now)."""
        times = self._seen.get(client)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._seen[client]
            return 0.0
        if len(times) < self.failures:
            return 0.0
        return times[0] + self.window - now

    def failed(self, client: str, now: float) -> None:
        times = self._seen.pop(client, None) or deque(maxlen=self.failures)
        times.append(now)
        self._seen[client] = times  # most recent last: the oldest go first past the cap
        while len(self._seen) > self.cap:
            self._seen.popitem(last=False)

    def clients(self) -> Iterable[str]:
        return self._seen.keys()


def describe_wait(seconds: float) -> dict[str, Any]:
    return {
        "detail": f"too many wrong tokens from this address: try again in {int(seconds) + 1} s",
        "retry_after": str(int(seconds) + 1),
    }
