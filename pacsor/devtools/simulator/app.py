"""The simulated Milvue v3 API as a Litestar application.

Routes, bodies and error forms follow milvue-api-v3.openapi.json (vendored next to this file).
Query parameters are checked by hand rather than by Litestar so that errors take the API's
forms: `{"message"}` for 400/403/404/429 and FastAPI's `{"detail": [...]}` for 422.

Signed URLs (outside the OpenAPI file: in the cloud they point at object storage) are served
here too: `PUT /signed/upload/{token}` takes one full instance announced by a
`POST /v3/studies?signed_url=true`, and `GET /signed/result/{token}` serves one result object
listed by `GET /v3/studies/{uid}?signed_url=true`. The token is the signature.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec
import pydicom
from litestar import Litestar, Request, Response, get, post, put
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Stream

from pacsor.ai.multipart import (
    DICOM_MEDIA_TYPE,
    boundary_from_content_type,
    content_type,
    encode_related,
    iter_parts,
    new_boundary,
)
from pacsor.devtools.simulator import reports, results
from pacsor.devtools.simulator.settings import VERSION, ResultSyntax, SimulatorSettings
from pacsor.devtools.simulator.state import SignedResult, SimulatorState

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("milvue-api-v3.openapi.json")
OWNER_HEADER = "x-goog-meta-owner"
# Query enums from the OpenAPI file; inference_command also takes the commands in use today.
_QUERY_ENUMS: dict[str, tuple[str, ...]] = {
    "inference_command": results.INFERENCE_COMMANDS,
    "output_format": ("overlay", "highbit", "gsps"),
    "language": ("fr", "en", "es", "de", "it", "pt"),
    "output_selection": ("all", "no_recap", "no_negatives", "none"),
    "recap_theme": ("dark", "light"),
    "structured_report_format": ("lite", "normal", "full", "none"),
    "static_report_format": ("rgb", "pdf", "none"),
}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

AnyRequest = Request[Any, Any, Any]


class BadUpload(ValueError):
    """The upload body is not what POST /v3/studies accepts; answered 400."""


class ConnectionCut(RuntimeError):
    """Raised mid-answer on purpose: the server closes the connection (a dropped link)."""


def _cut_answer() -> Response[Any]:
    """An answer that starts, then stops: the client sees the connection dropped."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"StudyInstanceUID": '
        raise ConnectionCut("simulated dropped connection")

    return Stream(body(), media_type="application/json")


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return _json({"message": message}, status, headers)


def _fault(status: int) -> Response[Any]:
    """An injected failure, in the form the real API uses for that status."""
    if status == 429:
        return _error(429, "Exceeded quota", {"Retry-After": "1"})
    if status == 422:
        item = {"loc": ["body"], "msg": "simulated validation error", "type": "value_error"}
        return _json({"detail": [item]}, 422)
    return _error(status, f"Simulated failure (HTTP {status})")


def _media_type(value: str) -> str:
    return value.split(";")[0].strip().lower()


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read the rest of a request body, so the client sees our answer, not a reset."""
    async for _ in chunks:
        pass


def _query_problems(request: AnyRequest, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """FastAPI-style validation errors for the query string."""
    problems: list[dict[str, Any]] = []
    query = request.query_params
    for name in required:
        if not query.get(name):
            problems.append(
                {"loc": ["query", name], "msg": "field required", "type": "value_error.missing"}
            )
    for name, allowed in _QUERY_ENUMS.items():
        value = query.get(name)
        if value is not None and value not in allowed:
            problems.append(
                {
                    "loc": ["query", name],
                    "msg": "value is not a valid enumeration member; permitted: "
                    + ", ".join(repr(v) for v in allowed),
                    "type": "type_error.enum",
                    "ctx": {"enum_values": list(allowed)},
                }
            )
    signed = query.get("signed_url")
    if signed is not None and signed.lower() not in _BOOLEANS:
        problems.append(
            {
                "loc": ["query", "signed_url"],
                "msg": "value could not be parsed to a boolean",
                "type": "type_error.bool",
            }
        )
    return problems


def _signed_url(request: AnyRequest) -> bool:
    return _BOOLEANS.get(request.query_params.get("signed_url", "false").lower(), False)


def _identify(ds: pydicom.Dataset, what: str) -> tuple[str, str]:
    """(SOP UID, study UID) of an uploaded instance."""
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    if not sop_uid or not study_uid:
        raise BadUpload(f"{what} has no SOPInstanceUID or StudyInstanceUID")
    return sop_uid, study_uid


def _stage(
    body: bytes, directory: Path, number: int, without_pixels: bool
) -> tuple[str, str, Path]:
    """Check one uploaded part is a DICOM file and write it: (SOP UID, study UID, file)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(body))
    except Exception as exc:  # pydicom raises many types on corrupt input: all mean "bad part"
        raise BadUpload(f"part {number} is not a readable DICOM file: {exc}") from exc
    sop_uid, study_uid = _identify(ds, f"part {number}")
    if without_pixels and "PixelData" in ds:
        raise BadUpload(
            f"part {number} carries pixel data: with signed_url=true, post the instances "
            "without it and PUT each full instance to its signed URL"
        )
    path = directory / f"staging-{uuid.uuid4().hex}.dcm"
    path.write_bytes(body)
    return sop_uid, study_uid, path


async def _receive_upload(
    ct: str, chunks: AsyncIterator[bytes], directory: Path, without_pixels: bool = False
) -> tuple[str, list[tuple[str, Path]]]:
    """Check and stage every part of an upload: (study UID, [(SOP UID, staged file)]).

    On any failure (bad part, client gone) the files staged so far are removed.
    """
    if _media_type(ct) != "multipart/related":
        raise BadUpload(f"expected a multipart/related body, got {ct!r}")
    boundary = boundary_from_content_type(ct)
    study_uid = ""
    staged: list[tuple[str, Path]] = []
    try:
        async for headers, body in iter_parts(chunks, boundary.encode("latin-1")):
            number = len(staged) + 1
            part_type = headers.get("content-type", "")
            if _media_type(part_type) != DICOM_MEDIA_TYPE:
                raise BadUpload(f"part {number} is {part_type!r}, expected {DICOM_MEDIA_TYPE}")
            sop_uid, part_study, path = await anyio.to_thread.run_sync(
                _stage, body, directory, number, without_pixels
            )
            staged.append((sop_uid, path))
            if study_uid and part_study != study_uid:
                raise BadUpload(
                    f"part {number} belongs to study {part_study}, not {study_uid}: "
                    "one study per request"
                )
            study_uid = part_study
        if not staged:
            raise BadUpload("the request carries no DICOM instance")
    except BaseException:
        for _, path in staged:
            path.unlink(missing_ok=True)
        raise
    return study_uid, staged


def create_app(settings: SimulatorSettings, state: SimulatorState | None = None) -> Litestar:
    """The simulator app; it owns (and cleans up) its state unless one is passed in."""
    owned = state is None
    store = SimulatorState() if state is None else state

    async def refused(request: AnyRequest) -> Response[Any] | None:
        """What every API route does first: latency, the always-failing switch, the key."""
        if settings.latency_seconds:
            await asyncio.sleep(settings.latency_seconds)
        if settings.always_fail is not None:
            return _fault(settings.always_fail)
        if settings.token is None:
            return None
        given = request.headers.get(OWNER_HEADER, "")
        if hmac.compare_digest(given.encode(), settings.token.encode()):
            return None
        return _error(403, f"Missing or invalid API key in the {OWNER_HEADER} header")

    def unknown(study_uid: str) -> Response[Any]:
        return _error(404, f"Study {study_uid} not found")

    def status_body(study_uid: str, status: str, message: str = "") -> dict[str, Any]:
        body = {"StudyInstanceUID": study_uid, "status": status, "version": VERSION}
        if message:
            body["message"] = message
        return body

    def running(study_uid: str, message: str) -> dict[str, Any]:
        return status_body(study_uid, "running", message)

    def forbidden(study_uid: str) -> dict[str, Any]:
        return status_body(
            study_uid, "forbidden", "Simulated refusal: this key's licence does not cover it"
        )

    def base_url(request: AnyRequest) -> str:
        return str(request.base_url).rstrip("/")

    def cut_now() -> bool:
        return store.next_cut() < settings.drop_connections

    @post("/v3/studies", status_code=200)
    async def upload_study(request: AnyRequest) -> Response[Any]:
        chunks = request.stream()
        signed = _signed_url(request)
        refusal = await refused(request)
        if refusal is None:
            rank = store.next_upload_request()
            if rank < len(settings.upload_faults):
                refusal = _fault(settings.upload_faults[rank])
            elif problems := _query_problems(request, ()):
                refusal = _json({"detail": problems}, 422)
            elif signed and settings.signed_url == "refuse":
                refusal = _error(400, "signed_url=true is not supported by this installation")
            elif not signed and settings.signed_url == "require":
                refusal = _error(400, "this environment takes uploads with signed_url=true only")
        if refusal is not None:
            await _drain(chunks)
            return refusal

        try:
            study_uid, staged = await _receive_upload(
                request.headers.get("content-type", ""),
                chunks,
                store.staging_dir(),
                without_pixels=signed,
            )
        except ValueError as exc:  # BadUpload, or a malformed multipart body
            await _drain(chunks)
            return _error(400, str(exc))
        await _drain(chunks)  # the epilogue, if any
        if cut_now():
            for _, path in staged:
                path.unlink(missing_ok=True)
            return _cut_answer()
        if signed:
            for _, path in staged:
                path.unlink(missing_ok=True)  # only the full instances are kept
            tokens = store.expect_puts(study_uid, [sop for sop, _ in staged])
        else:
            store.store(study_uid, staged)
        if settings.upload_seconds:
            await asyncio.sleep(settings.upload_seconds)  # a slow API: the upload stays in flight
        if signed:
            urls = {sop: f"{base_url(request)}/signed/upload/{t}" for sop, t in tokens.items()}
            return _json({"StudyInstanceUID": study_uid, "signed_urls": urls})
        message = f"{len(staged)} instance(s) received"
        return _json({"StudyInstanceUID": study_uid, "message": message})

    @put("/signed/upload/{token:str}", status_code=200)
    async def signed_upload(request: AnyRequest, token: FromPath[str]) -> Response[Any]:
        with store.put_in_flight():
            return await receive_put(request, token)

    async def receive_put(request: AnyRequest, token: str) -> Response[Any]:
        chunks = request.stream()
        if settings.latency_seconds:
            await asyncio.sleep(settings.latency_seconds)
        rank = store.next_put_request()
        target = store.signed_upload(token)
        refusal: Response[Any] | None = None
        if settings.always_fail is not None:
            refusal = _fault(settings.always_fail)
        elif target is None:
            refusal = _error(403, "Invalid or expired signed URL")
        elif rank < len(settings.put_faults):
            refusal = _fault(settings.put_faults[rank])
        elif _media_type(request.headers.get("content-type", "")) != DICOM_MEDIA_TYPE:
            refusal = _error(400, f"expected Content-Type {DICOM_MEDIA_TYPE}")
        if refusal is not None or target is None:
            await _drain(chunks)
            return refusal or _error(403, "Invalid or expired signed URL")
        path = store.staging_dir() / f"staging-{uuid.uuid4().hex}.dcm"
        try:
            with path.open("wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
            # Only its identity is checked: the pixel data need not be parsed.
            ds = await anyio.to_thread.run_sync(
                lambda: pydicom.dcmread(path, stop_before_pixels=True)
            )
            sop_uid, study_uid = _identify(ds, "the instance")
            if (sop_uid, study_uid) != (target.sop_uid, target.study_uid):
                raise BadUpload(
                    f"this URL is for {target.sop_uid}, not {sop_uid} of study {study_uid}"
                )
            if cut_now():
                raise ConnectionAbortedError
        except ConnectionAbortedError:
            path.unlink(missing_ok=True)
            return _cut_answer()
        except BadUpload as exc:
            path.unlink(missing_ok=True)
            return _error(400, str(exc))
        except Exception as exc:
            path.unlink(missing_ok=True)
            return _error(400, f"the body is not a readable DICOM file: {exc}")
        store.store(study_uid, [(sop_uid, path)], put=True)
        return Response(b"", status_code=200)

    def is_done(study_uid: str) -> bool:
        return (
            not store.awaiting_put(study_uid)
            and store.status_polls(study_uid) >= settings.running_polls
        )

    @get("/v3/studies/{study_instance_uid:str}/status")
    async def study_status(request: AnyRequest, study_instance_uid: FromPath[str]) -> Response[Any]:
        uid = study_instance_uid
        if (refusal := await refused(request)) is not None:
            return refusal
        rank = store.next_status_request()
        if rank < len(settings.status_faults):
            return _fault(settings.status_faults[rank])
        if not store.knows(uid):
            return unknown(uid)
        if store.awaiting_put(uid):
            return _json(running(uid, "Waiting for the instances to be uploaded"))
        polls_before = store.poll_status(uid) or 0
        if polls_before < settings.running_polls:
            return _json(running(uid, "Inference is running"))
        if settings.outcome == "error":
            return _json(status_body(uid, "error", "Simulated inference error"))
        return _json(status_body(uid, "done"))

    @get("/v3/studies/{study_instance_uid:str}")
    async def study_results(
        request: AnyRequest, study_instance_uid: FromPath[str]
    ) -> Response[Any]:
        uid = study_instance_uid
        if (refusal := await refused(request)) is not None:
            return refusal
        if problems := _query_problems(request, ("inference_command",)):
            return _json({"detail": problems}, 422)
        signed = _signed_url(request)
        if signed and settings.signed_url == "refuse":
            return _error(400, "signed_url=true is not supported by this installation")
        if not store.knows(uid):
            return unknown(uid)
        rank = store.next_result_request()
        if rank < len(settings.result_faults):
            return _fault(settings.result_faults[rank])

        command = request.query_params["inference_command"]
        accept = request.headers.get("accept", "").lower()
        wants_json = "application/json" in accept
        wants_dicom = "multipart/related" in accept or "*/*" in accept or not accept
        done = is_done(uid)
        asked_before = store.count_result_request(uid, done)

        def status_answer(body: dict[str, Any]) -> Response[Any]:
            if wants_json or signed:
                return _json(body)
            # Without JSON in Accept, the status comes wrapped in a multipart answer.
            return _multipart_json(body)

        if not done or asked_before < settings.not_ready_results:
            return status_answer(running(uid, "Inference is running"))
        if settings.outcome == "error":
            return _error(400, f"Inference failed for study {uid}")
        if settings.outcome == "forbidden":
            return status_answer(forbidden(uid))

        instances = store.instance_paths(uid)
        if settings.outcome == "empty" or request.query_params.get("output_selection") == "none":
            instances = []  # this configuration produces no output
        if signed:
            urls = [
                f"{base_url(request)}/signed/result/"
                + store.sign_result(SignedResult(uid, sop_uid, command, number))
                for number, (sop_uid, _) in enumerate(instances, start=1)
            ]
            form = "done" if urls else "empty"
            return _json({**status_body(uid, form), "signed_urls": urls})
        if not wants_dicom:
            return _json(status_body(uid, "done" if instances else "empty"))
        factories = [
            _result_factory(path, command, number, settings.result_syntax)
            for number, (_, path) in enumerate(instances, start=1)
        ]
        boundary = new_boundary()
        return Stream(encode_related(factories, boundary), media_type=content_type(boundary))

    @get("/signed/result/{token:str}")
    async def signed_result(request: AnyRequest, token: FromPath[str]) -> Response[Any]:
        if settings.latency_seconds:
            await asyncio.sleep(settings.latency_seconds)
        target = store.signed_result(token)
        if target is None:
            return _error(403, "Invalid or expired signed URL")
        paths = dict(store.instance_paths(target.study_uid))
        path = paths.get(target.sop_uid)
        if path is None:
            return _error(404, "No such object")
        data = await anyio.to_thread.run_sync(
            results.build_result,
            path,
            target.inference_command,
            target.number,
            settings.result_syntax,
        )
        return Response(data, media_type=DICOM_MEDIA_TYPE)

    async def findings(
        request: AnyRequest,
        uid: str,
        build: Callable[[str, list[results.InputInstance]], dict[str, Any]],
    ) -> Response[Any]:
        if (refusal := await refused(request)) is not None:
            return refusal
        if not store.knows(uid):
            return unknown(uid)
        store.count_findings_request(uid)
        if not is_done(uid):
            return _json(running(uid, "Inference is running"))
        if settings.outcome == "forbidden":
            return _json(forbidden(uid))
        if settings.outcome == "error":
            return _error(400, f"Inference failed for study {uid}")
        paths = [] if settings.outcome == "empty" else store.instance_paths(uid)
        inputs = await anyio.to_thread.run_sync(lambda: [results.read_input(p) for _, p in paths])
        return _json(build(uid, inputs))

    def findings_route(command: str) -> HTTPRouteHandler:
        """GET /v3/<command>/{uid}: the product's findings, in the schema of its kind."""
        build = partial(
            results.measure_findings
            if command in results.MEASURE_COMMANDS
            else results.detection_findings,
            command,
        )

        async def product_findings(
            request: AnyRequest, study_instance_uid: FromPath[str]
        ) -> Response[Any]:
            return await findings(request, study_instance_uid, build)

        return get(f"/v3/{command}/{{study_instance_uid:str}}", name=f"{command}-findings")(
            product_findings
        )

    product_routes = [
        findings_route(command)
        for command in (*results.DETECTION_FINDINGS, *results.MEASURE_COMMANDS)
    ]

    @get("/v1/reports/{study_instance_uid:str}")
    async def techcare_report(
        request: AnyRequest, study_instance_uid: FromPath[str]
    ) -> Response[Any]:
        """The TechCare Report service's route (see pacsor.ai.techcare_report)."""
        uid = study_instance_uid
        if (refusal := await refused(request)) is not None:
            return refusal
        language = request.query_params.get("language", "en")
        if language not in ("en", "fr"):
            return _error(400, f"language must be en or fr, got {language!r}")
        if not store.knows(uid):
            return unknown(uid)
        if not is_done(uid):
            return _json({"StudyInstanceUID": uid, "status": "running"})
        paths = [path for _, path in store.instance_paths(uid)]
        inputs = await anyio.to_thread.run_sync(lambda: [results.read_input(p) for p in paths])
        report = reports.techcare_report(uid, inputs, language)
        return _json({"StudyInstanceUID": uid, "status": "done", "report": report})

    @get("/healthz")
    async def health() -> Response[Any]:
        return _json({"status": "ok", "version": VERSION})

    @get("/openapi.json")
    async def openapi() -> Response[Any]:
        return Response(OPENAPI_PATH.read_bytes(), media_type="application/json")

    def http_error(request: AnyRequest, exc: HTTPException) -> Response[Any]:
        return _error(exc.status_code, exc.detail)

    def internal_error(request: AnyRequest, exc: Exception) -> Response[Any]:
        if isinstance(exc, HTTPException):  # e.g. the client went away mid-upload
            log.warning("simulator: %s %s: %s", request.method, request.url.path, exc.detail)
            return _error(exc.status_code, exc.detail)
        log.error("simulator: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"Internal error: {type(exc).__name__}")

    return Litestar(
        route_handlers=[
            upload_study,
            signed_upload,
            study_status,
            study_results,
            signed_result,
            *product_routes,
            techcare_report,
            health,
            openapi,
        ],
        exception_handlers={HTTPException: http_error, 500: internal_error},
        on_shutdown=[store.close] if owned else [],
        openapi_config=None,
        # pacsor configures logging once (JSON lines); Litestar would replace the root handler.
        logging_config=None,
        request_max_body_size=None,  # a study can be hundreds of megabytes
    )


def _result_factory(
    path: Path, command: str, number: int, syntax: ResultSyntax
) -> Callable[[], AsyncIterator[bytes]]:
    async def produce() -> AsyncIterator[bytes]:
        yield await anyio.to_thread.run_sync(results.build_result, path, command, number, syntax)

    return produce


def _multipart_json(body: dict[str, Any]) -> Response[Any]:
    boundary = new_boundary()
    payload = msgspec.json.encode(body)
    delimiter = f"--{boundary}".encode()
    content = (
        delimiter
        + b"\r\nContent-Type: application/json\r\n\r\n"
        + payload
        + b"\r\n"
        + delimiter
        + b"--\r\n"
    )
    media_type = f'multipart/related; type="application/json"; boundary={boundary}'
    return Response(content, media_type=media_type)
