"""The admin's HL7 routes: the configuration in force, loading a named one, and reports
pushed by external providers over HTTP (the same check and event as on NATS)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery, Parameter

from pacsor.admin.app import Admin
from pacsor.domain.external_report import ReportRefused
from pacsor.hl7.config_loading import LoadRefused, in_force, load_named, shown
from pacsor.hl7.external_reports import ReportAccepted, receive_report

AnyRequest = Request[Any, Any, Any]
MAX_REPORT_BYTES = 512 * 1024


def _admin(request: AnyRequest) -> Admin:
    admin: Admin = request.app.state.admin
    return admin


def _refusal(status: int, reason: str) -> Response[dict[str, Any]]:
    return Response({"status_code": status, "detail": reason}, status_code=status)


class LoadedOut(msgspec.Struct, frozen=True):
    name: str
    kind: str
    loaded_by: str
    loaded_at: str
    sequence: int
    settings: dict[str, str]
    template: Any


class Hl7ConfigOut(msgspec.Struct, frozen=True):
    environment: dict[str, str]
    loaded: LoadedOut | None
    effective: dict[str, str]
    template: Any


@get("/hl7/config", summary="The HL7 configuration in force", tags=["hl7"])
async def hl7_config(request: AnyRequest) -> Hl7ConfigOut:
    admin = _admin(request)
    base = admin.settings.hl7
    current, settings = await in_force(admin.events, base)
    template = (
        msgspec.json.decode(current.loaded.template)
        if current.loaded and current.loaded.template
        else None
    )
    loaded = None
    if current.event is not None and current.loaded is not None:
        loaded = LoadedOut(
            name=current.event.name,
            kind=current.event.kind,
            loaded_by=current.event.loaded_by,
            loaded_at=current.event.occurred_at.isoformat(),
            sequence=current.sequence,
            settings=current.loaded.settings,
            template=template,
        )
    return Hl7ConfigOut(
        environment=shown(base),
        loaded=loaded,
        effective=shown(settings),
        template=template,
    )


@post(
    "/hl7/config/load/{name:str}",
    status_code=200,
    summary="Load a named configuration (or template) from HL7_CUSTOM_DIR",
    tags=["hl7"],
)
async def load_hl7_config(
    request: AnyRequest,
    name: Annotated[str, Parameter(max_length=64)],
    kind: FromQuery[Literal["config", "template"]] = "config",
) -> Response[Any]:
    admin = _admin(request)
    client = request.client.host if request.client else "unknown"
    try:
        event, _, _ = await load_named(
            admin.events, admin.settings.hl7, name, kind, f"admin API ({client})"
        )
    except LoadRefused as err:
        return _refusal(err.status, err.reason)
    return Response(
        {"loaded": event.name, "kind": event.kind, "load_id": event.load_id}, status_code=200
    )


@post(
    "/webps/{provider:str}/reports",
    status_code=202,
    summary="Push a report from an external report provider (WEBPS_PROVIDERS)",
    tags=["hl7"],
)
async def push_report(
    request: AnyRequest, provider: Annotated[str, Parameter(max_length=64)]
) -> Response[Any]:
    body = await request.body()
    if len(body) > MAX_REPORT_BYTES:
        return _refusal(413, f"a report is at most {MAX_REPORT_BYTES} bytes")
    admin = _admin(request)
    # WEBPS_ENABLE and WEBPS_PROVIDERS as in force: a loaded configuration may change them.
    _, settings = await in_force(admin.events, admin.settings.hl7)
    try:
        accepted: ReportAccepted = await receive_report(admin.events, settings, provider, body)
    except ReportRefused as err:
        return _refusal(err.status, err.reason)
    return Response(msgspec.to_builtins(accepted), status_code=202)


HL7_ROUTES = [hl7_config, load_hl7_config, push_report]
