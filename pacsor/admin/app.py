"""The admin HTTP API (Litestar, msgspec models, OpenAPI at /schema) and the dashboard.

Every answer about a study comes from the read model folded from the stream; every action
appends an event. With ADMIN_TOKEN set, everything but /health needs the token as
`Authorization: Bearer <token>`, or, for the dashboard in a browser, the session cookie that
signing in at /login opens (pacsor.admin.security: the session, the limit on wrong tokens,
the Host and origin checks, the headers).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from pacsor.admin.formatting import register as register_filters
from pacsor.admin.health import Health, judge_health, peers_as_seen
from pacsor.admin.metrics import AdminMetrics
from pacsor.admin.operations import (
    Refused,
    RelaunchAccepted,
    ReplayAccepted,
    check_uid,
    request_relaunch,
    request_replay,
    request_study_replay,
)
from pacsor.admin.projector import BeyondTheStream, Projector
from pacsor.admin.read_model import ReadModel, StudyFilter
from pacsor.admin.security import (
    Sessions,
    SignInLimiter,
    allowed_hosts,
    describe_wait,
    guard_middleware,
)
from pacsor.config import Settings
from pacsor.config.variables import masked
from pacsor.domain.study_view import STATES, StudyView
from pacsor.jetstream.blobs import BlobStore
from pacsor.jetstream.broker_state import BrokerState
from pacsor.jetstream.eventlog import EventLog

SESSION_COOKIE = "pacsor_session"
SESSION_HOURS = 12.0
TEMPLATES = Path(__file__).with_name("templates")
READ_YOUR_WRITES_SECONDS = 10.0
Q_HELP = "part of a StudyInstanceUID or accession number"
UID_PATTERN = r"^[0-9.]{1,64}$"

# Documented, not enforced by Litestar: a malformed UID gets this API's own 400 saying why.
Uid = Annotated[
    str,
    PathParameter(
        description="a StudyInstanceUID: digits and dots, at most 64",
        schema_extra={"pattern": UID_PATTERN, "maxLength": 64},
    ),
]

AnyRequest = Request[Any, Any, Any]


@dataclass
class Admin:
    """What the admin's routes use, built once per process."""

    settings: Settings
    # What the broker says of the streams and consumers (pacsor.jetstream.broker_state).
    broker: Callable[[], Awaitable[BrokerState]]
    events: EventLog
    instances: BlobStore
    model: ReadModel
    projector: Projector
    metrics: AdminMetrics
    sessions: Sessions = field(default_factory=lambda: Sessions(SESSION_HOURS * 3600))
    limiter: SignInLimiter = field(default_factory=SignInLimiter)
    hosts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.hosts = self.hosts or allowed_hosts(self.settings)

    async def health(self) -> Health:
        return judge_health(
            await self.broker(),
            self.projector,
            self.metrics,
            peers_as_seen(self.settings, self.model),
        )

    def token_matches(self, client: str, supplied: str) -> bool:
        """Whether `supplied` is ADMIN_TOKEN; raises 429 while `client` must wait."""
        now = time.monotonic()
        wait = self.limiter.wait(client, now)
        if wait > 0:
            told = describe_wait(wait)
            raise TooManyRequestsException(
                detail=told["detail"], headers={"Retry-After": told["retry_after"]}
            )
        if hmac.compare_digest(supplied.encode(), self.settings.admin_token.encode()):
            return True
        self.limiter.failed(client, now)
        return False


# --- models ---------------------------------------------------------------------------------


class StepState(msgspec.Struct, frozen=True):
    name: str
    state: str
    core: str = ""


class StudySummary(msgspec.Struct, frozen=True):
    study_uid: str = msgspec.field(name="study_instance_uid")
    state: str
    accession_number: str
    study_date: str
    study_description: str
    first_received_at: datetime | None
    updated_at: datetime | None
    instance_count: int
    attempt: int
    cores: list[StepState]
    destinations: list[StepState]


class StudyPage(msgspec.Struct, frozen=True):
    studies: list[StudySummary]
    total: int
    limit: int
    offset: int


class RecordedEventOut(msgspec.Struct, frozen=True):
    sequence: int
    subject: str
    type: str
    event: dict[str, Any]


class RelaunchBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cores: list[str] = msgspec.field(default_factory=list)
    requested_by: str = ""


def summary(view: StudyView) -> StudySummary:
    return StudySummary(
        study_uid=view.study_uid,
        state=view.state,
        accession_number=view.accession_number,
        study_date=view.study_date,
        study_description=view.study_description,
        first_received_at=view.first_received_at,
        updated_at=view.updated_at,
        instance_count=view.instance_count,
        attempt=view.attempt,
        cores=[StepState(c.core, c.state) for c in view.cores],
        destinations=[StepState(d.destination, d.state, d.core) for d in view.destinations],
    )


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings by variable name, every secret replaced by "***" (or "")."""
    shown: dict[str, Any] = masked(msgspec.to_builtins(settings, enc_hook=str))
    return shown


# --- authentication -------------------------------------------------------------------------


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


def _token_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    admin: Admin = connection.app.state.admin
    if not admin.settings.admin_token or handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() == "bearer":
        allowed = admin.token_matches(client_address(connection), supplied.strip())
    else:
        session = connection.cookies.get(SESSION_COOKIE, "")
        allowed = admin.sessions.valid(session, time.monotonic())
    if not allowed:
        raise NotAuthorizedException(
            detail="a valid ADMIN_TOKEN is needed: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _refused(_: AnyRequest, err: Refused) -> Response[dict[str, Any]]:
    return Response({"status_code": err.status, "detail": err.message}, status_code=err.status)


def _unauthorized(request: AnyRequest, err: NotAuthorizedException) -> Response[Any]:
    """A browser is sent to the sign-in page; a script gets the 401 and why."""
    if "text/html" in request.headers.get("accept", ""):
        return Redirect(path="/login")
    body = {"status_code": 401, "detail": err.detail}
    return Response(body, status_code=401, headers=err.headers)


def _admin(request: AnyRequest) -> Admin:
    admin: Admin = request.app.state.admin
    return admin


def _utc(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def _who(request: AnyRequest, given: str, via: str) -> str:
    return given.strip()[:64] or f"{via} ({client_address(request)})"


async def _view_after(admin: Admin, uid: str, after: int | None) -> StudyView:
    if after is not None:
        try:
            await admin.projector.check_reached(after)
        except BeyondTheStream as err:
            raise HTTPException(status_code=400, detail=f"after: {err}") from None
        await admin.projector.wait_for(after, READ_YOUR_WRITES_SECONDS)
    view = admin.model.get(uid)
    if view is None:
        raise HTTPException(status_code=404, detail=f"no study {uid}")
    return view


# --- the API --------------------------------------------------------------------------------

# `state` is a name Litestar reserves for the application state: the query is mapped to it.
StateParam = Annotated[
    str | None,
    QueryParameter(name="state", description=f"one of {', '.join(STATES)}", max_length=16),
]


@get("/studies", summary="Studies, newest first", tags=["studies"])
async def list_studies(
    request: AnyRequest,
    study_state: StateParam = None,
    core: Annotated[str | None, QueryParameter(max_length=64)] = None,
    destination: Annotated[str | None, QueryParameter(max_length=128)] = None,
    since: Annotated[datetime | None, QueryParameter(description="received at or after")] = None,
    until: Annotated[datetime | None, QueryParameter(description="received before")] = None,
    q: Annotated[
        str | None,
        QueryParameter(description="part of a StudyInstanceUID or accession number", max_length=64),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
) -> StudyPage:
    if study_state is not None and study_state not in STATES:
        raise HTTPException(status_code=400, detail=f"state: one of {', '.join(STATES)}")
    where = StudyFilter(
        state=study_state,
        core=core,
        destination=destination,
        since=_utc(since),
        until=_utc(until),
        q=q or None,
        limit=limit,
        offset=offset,
    )
    views, total = _admin(request).model.query(where)
    return StudyPage([summary(v) for v in views], total, limit, offset)


@get("/studies/{uid:str}", summary="One study's view", tags=["studies"])
async def get_study(
    request: AnyRequest,
    uid: Uid,
    after: Annotated[
        int | None,
        QueryParameter(ge=0, description="wait (up to 10 s) until this stream sequence is applied"),
    ] = None,
) -> StudyView:
    return await _view_after(_admin(request), check_uid(uid), after)


@get("/studies/{uid:str}/events", summary="The study's events, in stream order", tags=["studies"])
async def study_events(request: AnyRequest, uid: Uid) -> list[RecordedEventOut]:
    history = await _admin(request).events.history(check_uid(uid))
    if not history:
        raise HTTPException(status_code=404, detail=f"no study {uid}")
    return [
        RecordedEventOut(
            r.sequence, r.subject, type(r.event).__name__, msgspec.to_builtins(r.event)
        )
        for r in history
    ]


async def _relaunch(request: AnyRequest, uid: str, body: RelaunchBody | None) -> RelaunchAccepted:
    admin = _admin(request)
    body = body or RelaunchBody()
    return await request_relaunch(
        admin.events,
        admin.instances,
        admin.settings,
        uid,
        tuple(body.cores),
        _who(request, body.requested_by, "admin API"),
    )


@post(
    "/studies/{uid:str}/relaunch",
    status_code=202,
    summary="Send the study again",
    tags=["relaunch"],
)
async def relaunch(
    request: AnyRequest, uid: Uid, data: JSONBody[RelaunchBody | None] = None
) -> RelaunchAccepted:
    return await _relaunch(request, uid, data)


@get(
    "/relaunch/{uid:str}",
    summary="The original gateway's relaunch: with an Authorization header, send the study "
    "again (202); without, a page that asks to confirm with a POST",
    tags=["relaunch"],
    responses={202: ResponseSpec(RelaunchAccepted, description="relaunch requested")},
)
async def relaunch_compatible(request: AnyRequest, uid: Uid) -> Response[Any]:
    # A browser can be made to GET any address (a link, an image), never with this header:
    # only a script that sets it changes state here.
    if "authorization" not in request.headers:
        check_uid(uid)
        return Template(template_name="relaunch_confirm.html", context={"uid": uid})
    return Response(await _relaunch(request, uid, None), status_code=202)


@post(
    "/destinations/{name:str}/replay",
    status_code=202,
    summary="Send every result made ready since a time again to one destination",
    tags=["relaunch"],
)
async def replay_destination(
    request: AnyRequest,
    name: Annotated[str, PathParameter(max_length=128)],
    since: Annotated[datetime, QueryParameter(description="results made ready at or after")],
) -> ReplayAccepted:
    admin = _admin(request)
    return await request_replay(
        admin.events,
        admin.model,
        admin.settings,
        name,
        _utc(since) or since,
        _who(request, "", "admin API"),
    )


@post(
    "/studies/{uid:str}/destinations/{name:str}/replay",
    status_code=202,
    summary="Send one study's latest results again to one destination",
    tags=["relaunch"],
)
async def replay_study_to_destination(
    request: AnyRequest, uid: Uid, name: Annotated[str, PathParameter(max_length=128)]
) -> ReplayAccepted:
    admin = _admin(request)
    return await request_study_replay(
        admin.events,
        admin.model,
        admin.settings,
        uid,
        name,
        _who(request, "", "admin API"),
    )


@get("/health", opt={"public": True}, summary="Pipeline health (503 when unhealthy)", tags=["ops"])
async def health(request: AnyRequest) -> Response[Health]:
    admin = _admin(request)
    report = await admin.health()
    return Response(report, status_code=200 if report.healthy else 503)


@get("/metrics", media_type="text/plain; version=0.0.4", summary="Prometheus metrics", tags=["ops"])
async def metrics(request: AnyRequest) -> bytes:
    admin = _admin(request)
    judge_health(await admin.broker(), admin.projector, admin.metrics)
    return admin.metrics.text()


@get("/config", summary="The effective configuration, secrets masked", tags=["ops"])
async def config(request: AnyRequest) -> dict[str, Any]:
    return masked_settings(_admin(request).settings)


API = [
    list_studies,
    get_study,
    study_events,
    relaunch,
    relaunch_compatible,
    replay_destination,
    replay_study_to_destination,
    health,
    metrics,
    config,
]


def create_app(admin: Admin, extra_handlers: list[Any] | None = None) -> Litestar:
    app = Litestar(
        route_handlers=[*API, *(extra_handlers or [])],
        guards=[_token_guard],
        middleware=[guard_middleware],
        exception_handlers={Refused: _refused, NotAuthorizedException: _unauthorized},
        openapi_config=OpenAPIConfig(
            title="pacsor admin",
            version="1",
            description="Where each study is, what happened to it; relaunch and replay.",
            path="/schema",
        ),
        template_config=TemplateConfig(
            directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=register_filters
        ),
        debug=False,
        # pacsor's JSON-lines logging stays as configured: Litestar would replace the handlers.
        logging_config=None,
    )
    app.state.admin = admin
    return app
