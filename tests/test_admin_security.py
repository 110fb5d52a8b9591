"""The admin against a hostile browser and a guesser, over real HTTP to the running admin:
foreign Host headers, cross-origin state changes, the GET that used to relaunch, wrong tokens,
the session cookie, the security headers and the counters /metrics serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsor.admin.security import Sessions, SignInLimiter, cross_origin, host_name
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.admin_data import admin_settings, fixture_studies
from tests.harness import ReceivingPacs, gateway_settings, pacsor_process, running_gateway
from tests.nats_server import NatsServer

ADMIN_TOKEN = "a-long-enough-admin-token"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def guarded(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = admin_settings(
        nats_server.url, tmp_path, ADMIN_TOKEN=ADMIN_TOKEN, ADMIN_HOSTS="pacsor.example.org"
    )
    async with (
        running_gateway(settings, ("admin",)) as ready,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as client,
    ):
        yield client


async def relaunches(nc: Client, uid: str) -> list[ev.Event]:
    return [
        r.event
        for r in await EventLog(nc.jetstream()).history(uid)
        if isinstance(r.event, ev.RelaunchRequested)
    ]


async def test_a_foreign_host_is_refused_whatever_the_token(guarded: httpx.AsyncClient) -> None:
    # DNS rebinding: attacker.example resolves to this machine; the browser sends its name.
    for host in ("attacker.example", "attacker.example:7000", "127.0.0.1.nip.io", ""):
        for path in ("/health", "/studies", "/"):
            refused = await guarded.get(path, headers={"Host": host, **BEARER})
            assert refused.status_code == 421, (host, path)
            assert "ADMIN_HOSTS" in refused.json()["detail"]
            assert refused.headers["x-frame-options"] == "DENY"
    for host in ("localhost:1234", "127.0.0.1", "[::1]:7000", "PACSOR.example.org:443"):
        served = await guarded.get("/health", headers={"Host": host})
        assert served.status_code == 200, host


async def test_a_cross_origin_post_changes_nothing(nc: Client, guarded: httpx.AsyncClient) -> None:
    await fixture_studies(nc)
    signed_in = await guarded.post("/login", data={"token": ADMIN_TOKEN})
    assert signed_in.status_code in {302, 303} and guarded.cookies.get("pacsor_session")
    base = str(guarded.base_url).rstrip("/")
    form = "/ui/studies/1.2.3.4/relaunch"
    # What a page of another site, the user signed in, would send: the cookie and its origin.
    for headers in (
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": base},
        {"Origin": base.replace("127.0.0.1", "localhost")},
    ):
        refused = await guarded.post(form, data={"requested_by": "x"}, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["detail"].startswith("cross-origin request refused")
    refused = await guarded.post("/login", data={"token": "x"}, headers={"Origin": "null"})
    assert refused.status_code == 403
    assert await relaunches(nc, "1.2.3.4") == []
    # The dashboard's own form: same origin. The study's instances are gone: 409 as a message.
    own = await guarded.post(
        form, data={}, headers={"Origin": base, "Sec-Fetch-Site": "same-origin"}
    )
    assert own.status_code in {302, 303}
    assert "no+longer+stored" in own.headers["location"]
    # A script with the bearer header is no browser: its origin does not matter.
    scripted = await guarded.post(
        "/studies/1.2.3.4/relaunch", headers={"Origin": "http://elsewhere", **BEARER}
    )
    assert scripted.status_code == 409


async def test_the_get_that_relaunched_now_asks_to_confirm(
    nc: Client, guarded: httpx.AsyncClient
) -> None:
    await fixture_studies(nc)
    await guarded.post("/login", data={"token": ADMIN_TOKEN})
    page = await guarded.get("/relaunch/1.2.3.4")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'method="post" action="/ui/studies/1.2.3.4/relaunch"' in page.text
    assert await relaunches(nc, "1.2.3.4") == []
    # With the header it still works as the original gateway's scripts expect.
    assert (await guarded.get("/relaunch/1.2.3.4", headers=BEARER)).status_code == 409
    assert (await guarded.get("/relaunch/1.2.3.12345", headers=BEARER)).status_code == 404
    wrong = await guarded.get("/relaunch/1.2.3.4", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (await guarded.get("/relaunch/not-a-uid")).status_code == 400


async def test_a_hundred_wrong_tokens_meet_a_lockout(guarded: httpx.AsyncClient) -> None:
    statuses: list[int] = []
    started = time.monotonic()
    for n in range(100):
        guess = {"Authorization": f"Bearer guess-{n:04d}-xxxxxxxxxxxx"}
        if n % 2:
            statuses.append((await guarded.get("/studies", headers=guess)).status_code)
        else:
            statuses.append(
                (await guarded.post("/login", data={"token": f"guess-{n}"})).status_code
            )
    took = time.monotonic() - started
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429] * 90, statuses
    locked = await guarded.get("/studies", headers=BEARER)
    # Locked out means the right token too: a 200 would tell a guesser it found it.
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert "too many wrong tokens" in locked.json()["detail"]
    page = await guarded.post("/login", data={"token": ADMIN_TOKEN})
    assert page.status_code == 429
    # /health stays open to the monitoring.
    assert (await guarded.get("/health")).status_code == 200
    print(f"100 wrong tokens in {took:.2f} s: 10 tried, 90 refused unheard")


async def test_the_cookie_names_a_session_not_the_token(guarded: httpx.AsyncClient) -> None:
    signed_in = await guarded.post("/login", data={"token": ADMIN_TOKEN})
    cookie = signed_in.headers["set-cookie"]
    session = guarded.cookies["pacsor_session"]
    assert ADMIN_TOKEN not in cookie and len(session) >= 40
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Max-Age=" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    # Behind a TLS proxy on this machine (uvicorn trusts its X-Forwarded-Proto) it is Secure.
    async with httpx.AsyncClient(base_url=guarded.base_url) as behind_tls:
        proxied = await behind_tls.post(
            "/login", data={"token": ADMIN_TOKEN}, headers={"X-Forwarded-Proto": "https"}
        )
        assert "; Secure" in proxied.headers["set-cookie"]
    assert (await guarded.get("/studies")).status_code == 200
    # A cookie holding the token, or a made-up session, is no session.
    for forged in (ADMIN_TOKEN, session[:-2] + "xx"):
        async with httpx.AsyncClient(base_url=guarded.base_url) as other:
            other.cookies.set("pacsor_session", forged)
            assert (await other.get("/studies")).status_code == 401
    assert (await guarded.post("/logout")).status_code in {302, 303}
    guarded.cookies.set("pacsor_session", session)
    assert (await guarded.get("/studies")).status_code == 401


async def test_every_response_carries_the_security_headers(guarded: httpx.AsyncClient) -> None:
    cases = [
        await guarded.get("/health"),
        await guarded.get("/login"),
        await guarded.get("/studies"),  # 401
        await guarded.get("/studies/1.2.3", headers=BEARER),  # 404
        await guarded.get("/", headers=BEARER),
    ]
    for response in cases:
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, response.url
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"


async def test_what_held_still_holds(guarded: httpx.AsyncClient) -> None:
    # Bodies past 64 MiB are refused before the handler reads them.
    huge = await guarded.post(
        "/studies/1.2.3.4/relaunch", content=b"{" + b" " * (64 * 1024 * 1024 + 10), headers=BEARER
    )
    assert huge.status_code == 413
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
        traversal = await guarded.get(path, headers=BEARER)
        assert traversal.status_code in {400, 404}, path
        assert "Admin" not in traversal.text
    assert (await guarded.get("/static/live.js")).status_code == 200  # public: the sign-in page


async def test_metrics_serve_pacsors_own_counters(nats_server: NatsServer, tmp_path: Path) -> None:
    settings = gateway_settings(nats_server.url, "http://127.0.0.1:9", ReceivingPacs())
    async with (
        running_gateway(settings, ("scp", "admin")) as ready,
        httpx.AsyncClient(base_url=ready["admin_url"], timeout=30) as client,
    ):

        def rejected() -> float:
            for line in (httpx.get(ready["admin_url"] + "/metrics")).text.splitlines():
                if line.startswith('pacsor_associations_rejected_total{reason="called_ae_title"}'):
                    return float(line.split()[-1])
            return 0.0

        before = await asyncio.to_thread(rejected)
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(Verification)
        assoc = await asyncio.to_thread(ae.associate, "127.0.0.1", settings.port, ae_title="NOTME")
        assert not assoc.is_established
        assert await asyncio.to_thread(rejected) == before + 1
        text = (await client.get("/metrics")).text
    for family in (
        "pacsor_handler_errors_total",
        "pacsor_steps_failed_total",
        "pacsor_associations_rejected_total",
        "pacsor_events_total",
    ):
        assert f"# TYPE {family} counter" in text, family


async def test_a_short_admin_token_stops_start_up_in_one_line(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    process = await pacsor_process(
        "run", "admin", cwd=tmp_path, NATS_URL=nats_server.url, ADMIN_TOKEN="a"
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    assert process.returncode != 0
    assert len(lines) == 1, lines
    assert "ADMIN_TOKEN: at least 16 characters are needed, it has 1" in lines[0]


# --- the pure parts -------------------------------------------------------------------------


def test_host_names_and_origins() -> None:
    assert host_name("Example.ORG:7000") == "example.org"
    assert host_name("[::1]:7000") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    host = {"host": "127.0.0.1:7000"}
    assert cross_origin(host) == ""
    assert cross_origin({**host, "origin": "http://127.0.0.1:7000"}) == ""
    assert cross_origin({**host, "sec-fetch-site": "none"}) == ""
    assert "http://127.0.0.1:7001" in cross_origin({**host, "origin": "http://127.0.0.1:7001"})
    assert cross_origin({**host, "sec-fetch-site": "same-site"}) != ""
    # The browser's own word wins over an Origin a privacy setting made "null".
    assert cross_origin({**host, "sec-fetch-site": "same-origin", "origin": "null"}) == ""


def test_the_limiter_is_per_address_and_bounded() -> None:
    limiter = SignInLimiter(failures=3, window=60, cap=100)
    for n in range(3):
        assert limiter.wait("10.0.0.1", n) == 0
        limiter.failed("10.0.0.1", n)
    assert limiter.wait("10.0.0.1", 3) == pytest.approx(57)
    assert limiter.wait("10.0.0.2", 3) == 0
    assert limiter.wait("10.0.0.1", 60.5) == 0  # the first failure left the window
    for n in range(10_000):
        limiter.failed(f"10.1.{n // 256}.{n % 256}", 100)
    assert len(list(limiter.clients())) == 100


def test_sessions_expire_and_are_bounded() -> None:
    sessions = Sessions(lifetime=10, cap=5)
    first = sessions.open(0)
    assert sessions.valid(first, 9.9) and not sessions.valid(first, 10)
    ids = [sessions.open(20) for _ in range(8)]
    assert len(sessions) == 5 and not sessions.valid(ids[0], 21) and sessions.valid(ids[-1], 21)
    assert len(set(ids)) == 8
