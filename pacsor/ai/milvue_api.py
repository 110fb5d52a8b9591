"""The one place that talks to the Milvue inference API (v3), over httpx.

Every failure surfaces as ApiError, whose `retryable` tells the caller whether trying again
later may help; the retry policy itself belongs to the caller. Uploads and result downloads
are streamed: neither a whole study nor a whole result body is held in memory.

An upload whose parts have their sizes (SizedPart: pacsor's uploader knows each stored
object's size) carries a Content-Length computed before the first byte goes, as a hospital's
outbound proxy may demand (411 for a chunked request); only a caller that gives bare factories
gets a chunked body, since each factory is read once, when its part is sent.
The client honours HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (httpx's trust_env).

Two ways of moving DICOM, as the API offers them:

- multipart STOW/WADO (on-premise APIs): `upload_study` posts the instances in one
  multipart/related body, `iter_results` reads the result objects from one;
- signed URLs (cloud environments): `upload_without_pixels` posts the instances without their
  pixel data and gets one URL per SOPInstanceUID, `put_instance` PUTs each full instance to
  its URL; with `signed_url=True`, `iter_results` lists the results as URLs and downloads them
  one by one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from pacsor.ai.multipart import (
    DICOM_MEDIA_TYPE,
    PartFactory,
    SizedPart,
    boundary_from_content_type,
    content_type,
    encode_related,
    iter_parts,
    new_boundary,
    related_length,
)
from pacsor.config import CoreSettings, Settings
from pacsor.errors import PacsorError

OWNER_HEADER = "x-goog-meta-owner"
RESULTS_ACCEPT = f'multipart/related; type="{DICOM_MEDIA_TYPE}"'
# The inference commands pacsor serves, and the findings JSON each returns at
# GET /v3/<command>/{uid}. The published contract describes smarturgences (detections:
# GetSmarturgencesResponseV3) and smartxpert (measures: GetSmartxpertResponseV3); the other
# products in use answer the same route with the schema of their kind.
FINDINGS_KINDS: dict[str, Literal["detections", "measures"]] = {
    "smarturgences": "detections",
    "detection": "detections",  # SmartTrauma
    "smartchest": "detections",
    "trauma": "detections",  # TechCare Trauma
    "smartxpert": "measures",
    "measures": "measures",
}
FINDINGS_COMMANDS = tuple(FINDINGS_KINDS)
INFERENCE_COMMANDS = FINDINGS_COMMANDS
_RETRYABLE_STATUSES = frozenset({408, 429})
# A valid UID that no modality uses (2.25 root, UUID 0): `check_access` asks its status.
PROBE_STUDY_UID = "2.25.0"
_MAX_ERROR_TEXT = 300

T = TypeVar("T")


class ApiError(PacsorError):
    """A request to the AI API failed.

    `status` is the HTTP status, or None when no answer came (connection error, timeout).
    """

    def __init__(
        self,
        status: int | None,
        message: str,
        *,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
        answer_lost: bool = False,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        self.retry_after = retry_after
        # The request went out but its answer never came (read timeout, connection dropped):
        # the API may have acted on it.
        self.answer_lost = answer_lost

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (transport errors, 408, 429, 5xx)."""
        if self.status is None:
            return True
        return self.status in _RETRYABLE_STATUSES or self.status >= 500

    def __str__(self) -> str:
        origin = "transport error" if self.status is None else f"HTTP {self.status}"
        target = f" from {self.method} {self.path}" if self.method else ""
        return f"{origin}{target}: {self.message}"


class ResultsNotReady(ApiError):
    """The result request answered "running" although the status said done.

    Known to happen for a short while after the status turns done; always worth a retry.
    """

    @property
    def retryable(self) -> bool:
        return True


class ResultsRefused(ApiError):
    """The API answered `forbidden` (or `error`) where results were asked for: final."""

    @property
    def retryable(self) -> bool:
        return False


class UploadResponse(msgspec.Struct, frozen=True):
    study_uid: str = msgspec.field(name="StudyInstanceUID")
    message: str = ""


class SignedUploadResponse(msgspec.Struct, frozen=True):
    study_uid: str = msgspec.field(name="StudyInstanceUID")
    signed_urls: dict[str, str] = msgspec.field(default_factory=dict)


class StudyStatus(msgspec.Struct, frozen=True):
    status: Literal["done", "running", "error"]
    version: str = ""
    message: str = ""


class _JsonStatus(msgspec.Struct, frozen=True):
    """The JSON status form of the results route (GetStudyResponseV3)."""

    status: str
    message: str = ""
    signed_urls: list[str] | None = None


ResultBody = AsyncIterator[bytes]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not a number: try the HTTP-date form below
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_message(response: httpx.Response) -> str:
    """The server's explanation: `message`, FastAPI's `detail`, else the body text."""
    text = response.text.strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(_validation_item(item) for item in detail)
    if text:
        return text[:_MAX_ERROR_TEXT]
    return response.reason_phrase or "no explanation given"


def _validation_item(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", ()))
    message = str(item.get("msg", item))
    return f"{location}: {message}" if location else message


def _is_json(response: httpx.Response) -> bool:
    media_type: str = response.headers.get("content-type", "")
    media_type = media_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


class MilvueApi:
    """Async client of the Milvue v3 API; use as an async context manager or call aclose()."""

    def __init__(
        self, base_url: str, token: str, timeout: float = 60.0, signed_url: bool = False
    ) -> None:
        self.signed_url = signed_url
        # One client (and so one connection pool) per API: a slow core holds no other's.
        # The owner header goes to signed URLs too: they are signed for it.
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={OWNER_HEADER: token},
            timeout=timeout,
            trust_env=True,  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY: the site's outbound proxy
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def upload_study(
        self, study_uid: str, parts: Sequence[PartFactory | SizedPart]
    ) -> UploadResponse:
        """POST /v3/studies: one STOW request carrying every instance, streamed.

        Each part yields the bytes of one DICOM file (with its file meta); it is called
        when its part is sent. With every part's size the request carries a Content-Length,
        else it goes chunked. An exception raised by a factory propagates unchanged.
        """
        return await self._post_study(study_uid, parts, UploadResponse, {})

    async def _post_study(
        self,
        study_uid: str,
        parts: Sequence[PartFactory | SizedPart],
        answer: type[T],
        params: dict[str, str],
    ) -> T:
        """POST /v3/studies with one multipart/related part per instance, streamed."""
        if not parts:
            raise ValueError(f"study {study_uid}: nothing to upload")
        boundary = new_boundary()
        headers = {"Content-Type": content_type(boundary), "Accept": "application/json"}
        bodies = [p.body if isinstance(p, SizedPart) else p for p in parts]
        sizes = [p.size for p in parts if isinstance(p, SizedPart)]
        if len(sizes) == len(parts):
            headers["Content-Length"] = str(related_length(sizes, boundary))
        path = "/v3/studies"
        response = await self._send(
            "POST",
            path,
            params=params,
            content=encode_related(bodies, boundary, sizes if len(sizes) == len(parts) else None),
            headers=headers,
        )
        return self._decode(response, "POST", path, answer)

    async def upload_without_pixels(
        self, study_uid: str, parts: Sequence[PartFactory | SizedPart]
    ) -> dict[str, str]:
        """POST /v3/studies?signed_url=true: the instances without their pixel data.

        Returns the URL to PUT each full instance to, by SOPInstanceUID.
        """
        signed = {"signed_url": "true"}
        return (await self._post_study(study_uid, parts, SignedUploadResponse, signed)).signed_urls

    async def put_instance(self, url: str, body: PartFactory, size: int | None = None) -> None:
        """PUT one full instance, streamed, to its signed URL (Content-Type application/dicom).

        With its `size`, the body goes with a Content-Length (checked as it streams) rather
        than chunked.
        """
        headers = {"Content-Type": DICOM_MEDIA_TYPE}
        content = body()
        if size is not None:
            headers["Content-Length"] = str(size)
            content = _exactly(content, size)
        await self._send("PUT", url, content=content, headers=headers, label=_url_path(url))

    async def check_access(self) -> str | None:
        """None when the API answers and accepts the token, else what is wrong (one line).

        Asks the status of a study no one uploaded: "not found" means the key was accepted.
        """
        try:
            await self.get_status(PROBE_STUDY_UID)
        except ApiError as err:
            if err.status == 404:
                return None
            if err.status is None:
                return f"unreachable: {err.message}"
            if err.status in (401, 403):
                return f"token refused (HTTP {err.status})"
            return str(err)
        return None

    async def get_status(self, study_uid: str) -> StudyStatus:
        """GET /v3/studies/{uid}/status: done, running or error."""
        path = f"/v3/studies/{_uid(study_uid)}/status"
        response = await self._send("GET", path, headers={"Accept": "application/json"})
        return self._decode(response, "GET", path, StudyStatus)

    async def iter_results(
        self,
        study_uid: str,
        inference_command: str,
        options: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[ResultBody, None]:
        """GET /v3/studies/{uid}?inference_command=...: yield each result DICOM object.

        Each object is an async iterator of its bytes, to be read before asking for the next
        one. `options` adds query parameters (output_format, language, ...). No objects
        ("empty", or an empty multipart body) yields nothing. Raises ResultsNotReady when the
        server says "running", ResultsRefused when it says "forbidden".
        """
        path = f"/v3/studies/{_uid(study_uid)}"
        params = {**(options or {}), "inference_command": inference_command}
        if self.signed_url:
            params["signed_url"] = "true"
            response = await self._send(
                "GET", path, params=params, headers={"Accept": "application/json"}
            )
            urls = self._check_json_status(response, "GET", path, signed=True)
            for url in urls:
                async with self._download(url) as download:
                    yield download
            return
        request = self._client.build_request(
            "GET", path, params=params, headers={"Accept": RESULTS_ACCEPT}
        )
        try:
            response = await self._client.send(request, stream=True)
            try:
                if response.is_error or _is_json(response):
                    await response.aread()
                    self._raise_for_status(response, "GET", path)
                    self._check_json_status(response, "GET", path)
                    return  # JSON "empty": no result objects
                try:
                    boundary = boundary_from_content_type(response.headers.get("content-type", ""))
                    async for headers, part in iter_parts(
                        response.aiter_bytes(), boundary.encode("latin-1")
                    ):
                        part_type = headers.get("content-type", DICOM_MEDIA_TYPE)
                        if part_type.split(";")[0].strip().lower() == "application/json":
                            # The status, wrapped in a multipart answer (see the OpenAPI text).
                            self._check_json_status(response, "GET", path, part)
                            continue
                        yield _one_chunk(part)
                except ValueError as exc:
                    raise ApiError(
                        response.status_code,
                        f"malformed multipart answer: {exc}",
                        method="GET",
                        path=path,
                    ) from exc
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            raise _transport_error(exc, "GET", path) from exc

    @contextlib.asynccontextmanager
    async def _download(self, url: str) -> AsyncIterator[ResultBody]:
        """GET one signed URL, its body streamed."""
        path = _url_path(url)
        request = self._client.build_request("GET", url, headers={"Accept": DICOM_MEDIA_TYPE})
        try:
            response = await self._client.send(request, stream=True)
        except httpx.RequestError as exc:
            raise _transport_error(exc, "GET", path) from exc
        try:
            if response.is_error:
                await response.aread()
                self._raise_for_status(response, "GET", path)

            async def body() -> AsyncIterator[bytes]:
                try:
                    async for chunk in response.aiter_bytes():
                        yield chunk
                except httpx.RequestError as exc:
                    raise _transport_error(exc, "GET", path) from exc

            yield body()
        finally:
            await response.aclose()

    async def get_findings(
        self, study_uid: str, inference_command: str, options: Mapping[str, str] | None = None
    ) -> bytes:
        """GET /v3/<command>/{uid}: the findings, as the JSON the API sent.

        Raises ResultsNotReady while the answer's status is "running", ResultsRefused when it
        is "forbidden".
        """
        if inference_command not in FINDINGS_KINDS:
            raise ValueError(
                f"findings exist for {', '.join(FINDINGS_COMMANDS)} only, not {inference_command!r}"
            )
        path = f"/v3/{inference_command}/{_uid(study_uid)}"
        response = await self._send(
            "GET", path, params=dict(options or {}), headers={"Accept": "application/json"}
        )
        findings: dict[str, Any] = self._decode(response, "GET", path, dict)
        if findings.get("status") != "done":
            self._check_json_status(response, "GET", path)
        return response.content

    async def _send(
        self, method: str, path: str, label: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; `label` names it in errors (a signed URL's query is a secret)."""
        label = label or path
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.RequestError as exc:
            raise _transport_error(exc, method, label) from exc
        self._raise_for_status(response, method, label)
        return response

    @staticmethod
    def _raise_for_status(response: httpx.Response, method: str, path: str) -> None:
        if response.is_success:
            return
        raise ApiError(
            response.status_code,
            _error_message(response),
            method=method,
            path=path,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )

    @staticmethod
    def _decode(response: httpx.Response, method: str, path: str, kind: type[T]) -> T:
        try:
            return msgspec.json.decode(response.content, type=kind)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise ApiError(
                response.status_code,
                f"unexpected answer ({exc}): {response.text[:_MAX_ERROR_TEXT]}",
                method=method,
                path=path,
            ) from exc

    @classmethod
    def _check_json_status(
        cls,
        response: httpx.Response,
        method: str,
        path: str,
        body: bytes | None = None,
        signed: bool = False,
    ) -> list[str]:
        """Act on a JSON status received where result objects were expected.

        "running" raises ResultsNotReady, "forbidden" (and "error") ResultsRefused; "empty"
        means no objects. With `signed` (results asked as signed URLs), "done" returns the
        URLs it lists, none when it lists none.
        """
        raw = response.content if body is None else body
        try:
            status = msgspec.json.decode(raw, type=_JsonStatus)
        except msgspec.DecodeError as exc:
            raise ApiError(
                response.status_code,
                f"unexpected JSON answer ({exc}): {raw[:_MAX_ERROR_TEXT]!r}",
                method=method,
                path=path,
            ) from exc
        if status.status == "empty":
            return []
        if status.status == "done" and signed:
            return status.signed_urls or []
        if status.status == "running":
            message = "results not ready (status running)"
            if status.message:
                message += f": {status.message}"
            raise ResultsNotReady(response.status_code, message, method=method, path=path)
        message = f"answered status {status.status!r} instead of results"
        if status.message:
            message += f": {status.message}"
        if status.status in ("forbidden", "error"):
            raise ResultsRefused(response.status_code, message, method=method, path=path)
        raise ApiError(response.status_code, message, method=method, path=path)


def _uid(uid: str) -> str:
    return quote(uid, safe="")


def _url_path(url: str) -> str:
    """A URL without its query, for messages: the signature of a signed URL stays secret."""
    return url.split("?", 1)[0]


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _exactly(body: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """`body`'s chunks, checked to add up to the `size` its Content-Length announced."""
    given = 0
    async for chunk in body:
        given += len(chunk)
        if given > size:
            raise ValueError(f"the body gives more than its {size} bytes")
        yield chunk
    if given != size:
        raise ValueError(f"the body gave {given} bytes, not its {size}")


def _transport_error(exc: httpx.RequestError, method: str, path: str) -> ApiError:
    detail = str(exc) or "no detail"
    lost = isinstance(exc, (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError))
    # No answer: the message names the whole URL (without its query), so the peer is known.
    with contextlib.suppress(RuntimeError):  # RuntimeError: no request attached to the error
        path = _url_path(str(exc.request.url))
    return ApiError(
        None, f"{type(exc).__name__}: {detail}", method=method, path=path, answer_lost=lost
    )


@contextlib.asynccontextmanager
async def core_clients(settings: Settings) -> AsyncIterator[list[tuple[CoreSettings, MilvueApi]]]:
    """A client for each AI core of the settings, closed together."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            (
                core,
                stack.push_async_exit(
                    MilvueApi(core.api_url, core.token, timeout, signed_url=core.signed_url)
                ),
            )
            for core, timeout in ((c, settings.api_timeout_seconds) for c in settings.cores)
        ]
