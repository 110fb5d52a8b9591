"""The dashboard: server-rendered pages for people, plain HTML forms, no JavaScript.

    /                          the study list, a coloured state per core and destination
    /ui/studies/{uid}          one study: its steps, attempts and timeline; a relaunch button
    /login                     with ADMIN_TOKEN set, the token once, kept in a cookie

Pages of a study still moving refresh themselves every few seconds (a meta refresh), which is
all a ward PC needs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import PathParameter, QueryParameter, URLEncodedBody
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from pacsor.admin.app import (
    SESSION_COOKIE,
    SESSION_HOURS,
    AnyRequest,
    _admin,
    _view_after,
    _who,
    client_address,
)
from pacsor.admin.operations import Refused, check_uid, request_relaunch, request_replay
from pacsor.admin.read_model import StudyFilter
from pacsor.domain.event_text import detail
from pacsor.domain.study_view import STATES

PAGE_SIZE = 50
REFRESH_SECONDS = 3
MOVING = {"receiving", "complete", "uploaded", "results"}


class LoginForm(msgspec.Struct, frozen=True):
    token: str = ""


class RelaunchForm(msgspec.Struct, frozen=True):
    requested_by: str = ""


class ReplayForm(msgspec.Struct, frozen=True):
    destination: str = ""
    since: str = ""


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at is not None else ""


@get("/", include_in_schema=False)
async def study_list(
    request: AnyRequest,
    study_state: Annotated[str | None, QueryParameter(name="state", max_length=16)] = None,
    q: Annotated[str | None, QueryParameter(max_length=64)] = None,
    page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
) -> Template:
    if study_state not in (None, "", *STATES):
        raise HTTPException(status_code=400, detail=f"state: one of {', '.join(STATES)}")
    where = StudyFilter(
        state=study_state or None, q=q or None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    admin = _admin(request)
    views, total = admin.model.query(where)
    destinations = dict.fromkeys(str(d) for core in admin.settings.cores for d in core.destinations)
    return Template(
        template_name="studies.html",
        context={
            "destinations": list(destinations),
            "message": request.query_params.get("message", ""),
            "studies": views,
            "total": total,
            "page": page,
            "pages": max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
            "state": study_state or "",
            "q": q or "",
            "states": STATES,
            "when": _when,
        },
    )


@get("/ui/studies/{uid:str}", include_in_schema=False)
async def study_page(
    request: AnyRequest,
    uid: Annotated[str, PathParameter(max_length=64)],
    after: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> Template:
    admin = _admin(request)
    view = await _view_after(admin, check_uid(uid), after)
    history = await admin.events.history(uid)
    timeline = [
        {
            "sequence": r.sequence,
            "at": _when(r.event.occurred_at),
            "type": type(r.event).__name__,
            "detail": detail(r.event),
        }
        for r in history
    ]
    moving = view.state in MOVING or view.relaunch_pending
    return Template(
        template_name="study.html",
        context={
            "study": view,
            "timeline": timeline,
            "refresh": REFRESH_SECONDS if moving else None,
            "when": _when,
            "message": request.query_params.get("message", ""),
        },
    )


@post("/ui/studies/{uid:str}/relaunch", include_in_schema=False)
async def relaunch_from_page(
    request: AnyRequest,
    uid: Annotated[str, PathParameter(max_length=64)],
    data: URLEncodedBody[RelaunchForm],
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
        if err.status == 400:
            raise
        return Redirect(path=f"/ui/studies/{uid}", query_params={"message": err.message})
    return Redirect(
        path=f"/ui/studies/{uid}",
        query_params={"after": str(accepted.sequence), "message": "Relaunch requested."},
    )


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


@get("/login", include_in_schema=False, opt={"public": True})
async def login_page() -> Template:
    return Template(template_name="login.html", context={"failed": False})


@post("/login", include_in_schema=False, opt={"public": True})
async def login(
    request: AnyRequest,
    data: URLEncodedBody[LoginForm],
) -> Response[Any]:
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
    study_page,
    relaunch_from_page,
    replay_from_page,
    login_page,
    login,
    logout,
]
