"""The dashboard: server-rendered pages for people, plain HTML forms, one small script.

    /                               the study list and the pipeline's health strip
    /ui/studies/{uid}               one study: its cores and destinations, the time of each
                                    step, its attempts and timeline; relaunch, send again
    /ui/live/...                    the same parts alone, which static/live.js fetches every
                                    few seconds and swaps in when they changed (no reload)
    /login, /logout                 with ADMIN_TOKEN set: the token once, then a session

Every action is a POST form from these pages (same origin, see pacsor.admin.security); the
pages work without the script, only without refreshing themselves.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import PathParameter, QueryParameter, URLEncodedBody
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from pacsor.admin.app import (
    SESSION_COOKIE,
    SESSION_HOURS,
    Admin,
    AnyRequest,
    _admin,
    _view_after,
    _who,
    client_address,
)
from pacsor.admin.operations import (
    Refused,
    check_uid,
    request_relaunch,
    request_replay,
    request_study_replay,
)
from pacsor.admin.read_model import StudyFilter
from pacsor.domain.event_text import detail
from pacsor.domain.study_view import STATES, StudyView, step_times

PAGE_SIZE = 50
REFRESH_SECONDS = 3
MOVING = {"receiving", "complete", "uploaded", "results"}
# The list's quick filters, as mercure's queue tabs: what an operator looks for first.
TABS = (
    ("", "All"),
    ("receiving", "Receiving"),
    ("uploaded", "At the AI"),
    ("failed", "Failed"),
    ("dispatched", "Delivered"),
    ("nothing_to_upload", "Nothing to upload"),
)

Uid = Annotated[str, PathParameter(max_length=64)]
StateQuery = Annotated[str | None, QueryParameter(name="state", max_length=16)]
Search = Annotated[str | None, QueryParameter(max_length=64)]
PageNumber = Annotated[int, QueryParameter(ge=1, le=100_000)]


class LoginForm(msgspec.Struct, frozen=True):
    token: str = ""


class RelaunchForm(msgspec.Struct, frozen=True):
    requested_by: str = ""


class ReplayForm(msgspec.Struct, frozen=True):
    destination: str = ""
    since: str = ""


class SendAgainForm(msgspec.Struct, frozen=True):
    destination: str = ""


# --- the study list -------------------------------------------------------------------------


def _list_context(admin: Admin, state: str | None, q: str | None, page: int) -> dict[str, Any]:
    if state not in (None, "", *STATES):
        raise HTTPException(status_code=400, detail=f"state: one of {', '.join(STATES)}")
    where = StudyFilter(
        state=state or None, q=q or None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    views, total = admin.model.query(where)
    counts = admin.model.state_counts()
    query = urlencode({k: v for k, v in (("state", state), ("q", q), ("page", page)) if v})
    return {
        "studies": views,
        "total": total,
        "page": page,
        "pages": max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
        "state": state or "",
        "q": q or "",
        "query": query,
        "tabs": [
            (s, label, sum(counts.values()) if not s else counts.get(s, 0)) for s, label in TABS
        ],
        "states": STATES,
        "refresh": REFRESH_SECONDS,
    }


async def _health_context(admin: Admin) -> dict[str, Any]:
    report = await admin.health()
    consumers = sorted(report.consumers, key=lambda c: (-(c.pending + c.ack_pending), c.consumer))
    return {
        "health": report,
        "consumers": consumers,
        "backlog": sum(c.pending + c.ack_pending for c in report.consumers),
        "redelivered": sum(c.redelivered for c in report.consumers),
        "lag": max(report.stream_sequence - report.applied_sequence, 0),
    }


@get("/", include_in_schema=False)
async def study_list(
    request: AnyRequest,
    study_state: StateQuery = None,
    q: Search = None,
    page: PageNumber = 1,
) -> Template:
    admin = _admin(request)
    destinations = dict.fromkeys(str(d) for core in admin.settings.cores for d in core.destinations)
    return Template(
        template_name="studies.html",
        context={
            **_list_context(admin, study_state, q, page),
            **await _health_context(admin),
            "destinations": list(destinations),
            "message": request.query_params.get("message", ""),
        },
    )


@get("/ui/live/studies", include_in_schema=False)
async def live_list(
    request: AnyRequest,
    study_state: StateQuery = None,
    q: Search = None,
    page: PageNumber = 1,
) -> Template:
    context = _list_context(_admin(request), study_state, q, page)
    return Template(template_name="_list.html", context=context)


@get("/ui/live/health", include_in_schema=False)
async def live_health(request: AnyRequest) -> Template:
    return Template(template_name="_health.html", context=await _health_context(_admin(request)))


# --- one study ------------------------------------------------------------------------------


async def _study_context(admin: Admin, view: StudyView) -> dict[str, Any]:
    history = await admin.events.history(view.study_uid)
    timeline = []
    previous: datetime | None = None
    start = history[0].event.occurred_at if history else None
    for r in history:
        at = r.event.occurred_at
        timeline.append(
            {
                "sequence": r.sequence,
                "at": at,
                "since_previous": (at - previous).total_seconds() if previous else None,
                "since_start": (at - start).total_seconds() if start else 0.0,
                "type": type(r.event).__name__,
                "detail": detail(r.event),
            }
        )
        previous = at
    now = datetime.now(UTC)
    steps = step_times(view)
    longest = max((s.seconds(now) for s in steps), default=0.0) or 1.0
    configured = {str(d) for core in admin.settings.cores for d in core.destinations}
    return {
        "study": view,
        "timeline": timeline,
        "steps": [(s, s.seconds(now), s.seconds(now) / longest) for s in steps],
        "can_send_again": configured,
        "moving": view.state in MOVING or view.relaunch_pending,
        "refresh": REFRESH_SECONDS,
    }


@get("/ui/studies/{uid:str}", include_in_schema=False)
async def study_page(
    request: AnyRequest,
    uid: Uid,
    after: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> Template:
    admin = _admin(request)
    view = await _view_after(admin, check_uid(uid), after)
    return Template(
        template_name="study.html",
        context={
            **await _study_context(admin, view),
            "message": request.query_params.get("message", ""),
        },
    )


@get("/ui/live/studies/{uid:str}", include_in_schema=False)
async def live_study(request: AnyRequest, uid: Uid) -> Template:
    admin = _admin(request)
    view = await _view_after(admin, check_uid(uid), None)
    return Template(template_name="_study.html", context=await _study_context(admin, view))


@post("/ui/studies/{uid:str}/relaunch", include_in_schema=False)
async def relaunch_from_page(
    request: AnyRequest, uid: Uid, data: URLEncodedBody[RelaunchForm]
) -> Redirect:
    admin = _admin(request)
    try:
        accepted = await request_relaunch(
            admin.events,
            admin.instances,
            admin.settings,
            uid,
            (),
            _who(request, data.requested_by, "dashboard"),
        )
    except Refused as err:
        return _back_with_refusal(uid, err)
    return _back_to_study(uid, accepted.sequence, "Relaunch requested.")


@post("/ui/studies/{uid:str}/send-again", include_in_schema=False)
async def send_again_from_page(
    request: AnyRequest, uid: Uid, data: URLEncodedBody[SendAgainForm]
) -> Redirect:
    """The button beside a failed destination: this study's results, again, there only."""
    admin = _admin(request)
    try:
        accepted = await request_study_replay(
            admin.events,
            admin.model,
            admin.settings,
            uid,
            data.destination,
            _who(request, "", "dashboard"),
        )
    except Refused as err:
        return _back_with_refusal(uid, err)
    message = f"Sending the results again to {accepted.destination}."
    return _back_to_study(uid, accepted.sequence, message)


def _back_to_study(uid: str, after: int, message: str) -> Redirect:
    """The study's page, once the read model holds the request (`after`), saying it."""
    return Redirect(
        path=f"/ui/studies/{uid}", query_params={"after": str(after), "message": message}
    )


def _back_with_refusal(uid: str, err: Refused) -> Redirect:
    """The study's page saying why the request was refused; a malformed one stays a 400."""
    if err.status == 400:
        raise err
    return Redirect(path=f"/ui/studies/{uid}", query_params={"message": err.message})


@post("/ui/replay", include_in_schema=False)
async def replay_from_page(request: AnyRequest, data: URLEncodedBody[ReplayForm]) -> Redirect:
    """The list page's form: every result made ready since a time, again to one destination."""
    admin = _admin(request)
    try:
        since = datetime.fromisoformat(data.since)
    except ValueError:
        return Redirect(path="/", query_params={"message": f"Not a time: {data.since[:40]!r}"})
    try:
        accepted = await request_replay(
            admin.events,
            admin.model,
            admin.settings,
            data.destination,
            since if since.tzinfo else since.replace(tzinfo=UTC),
            _who(request, "", "dashboard"),
        )
    except Refused as err:
        return Redirect(path="/", query_params={"message": err.message})
    return Redirect(path="/", query_params={"message": accepted.message})


# --- signing in -----------------------------------------------------------------------------


@get("/login", include_in_schema=False, opt={"public": True})
async def login_page() -> Template:
    return Template(template_name="login.html", context={"failed": False})


@post("/login", include_in_schema=False, opt={"public": True})
async def login(request: AnyRequest, data: URLEncodedBody[LoginForm]) -> Response[Any]:
    admin = _admin(request)
    if not admin.settings.admin_token:
        return Redirect(path="/")
    if not admin.token_matches(client_address(request), data.token.strip()):
        return Template(template_name="login.html", context={"failed": True}, status_code=401)
    # The cookie names a session kept in this process, never the token itself.
    response: Response[Any] = Redirect(path="/")
    response.set_cookie(
        SESSION_COOKIE,
        admin.sessions.open(time.monotonic()),
        max_age=int(SESSION_HOURS * 3600),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@post("/logout", include_in_schema=False, opt={"public": True})
async def logout(request: AnyRequest) -> Response[Any]:
    _admin(request).sessions.close(request.cookies.get(SESSION_COOKIE, ""))
    response: Response[Any] = Redirect(path="/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


# The dashboard's script and style sheet: public, as the sign-in page uses them.
STATIC = create_static_files_router(
    path="/static",
    directories=[Path(__file__).with_name("static")],
    opt={"public": True},
    include_in_schema=False,
)

DASHBOARD = [
    STATIC,
    study_list,
    live_list,
    live_health,
    study_page,
    live_study,
    relaunch_from_page,
    send_again_from_page,
    replay_from_page,
    login_page,
    login,
    logout,
]
