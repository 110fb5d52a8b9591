"""The Milvue API simulator, over real HTTP, checked against the vendored OpenAPI contract."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from pacsor.ai.multipart import iter_parts
from pacsor.devtools.simulator import (
    SimulatorSettings,
    running_simulator,
    settings_from_env,
)
from pacsor.devtools.simulator.app import OPENAPI_PATH
from pacsor.devtools.simulator.results import result_series_uid, result_sop_uid
from tests.dicom_factory import make_image, new_uid, to_bytes
from tests.harness import TOKEN, Simulator

pytestmark = pytest.mark.simulator(running_polls=2)

AUTH = {"x-goog-meta-owner": TOKEN}
DICOM_ACCEPT = 'multipart/related; type="application/dicom"'
SPEC = OpenAPI.from_file_path(str(OPENAPI_PATH))

STUDIES = "/v3/studies"
STATUS = "/v3/studies/{study_instance_uid}/status"
RESULTS = "/v3/studies/{study_instance_uid}"
SMARTURGENCES = "/v3/smarturgences/{study_instance_uid}"
SMARTXPERT = "/v3/smartxpert/{study_instance_uid}"


def conforms(response: httpx.Response, path_pattern: str) -> httpx.Response:
    """Raise unless the response is one the OpenAPI file allows for this operation."""
    request = response.request
    openapi_request = MockRequest(
        "http://simulator",
        request.method,
        request.url.path,
        path_pattern=path_pattern,
        args=dict(request.url.params),
        headers=dict(request.headers),
    )
    openapi_response = MockResponse(
        response.content,
        status_code=response.status_code,
        headers=dict(response.headers),
        content_type=response.headers.get("content-type", ""),
    )
    SPEC.validate_response(openapi_request, openapi_response)
    return response


def stow_body(files: list[bytes], boundary: str = "test-boundary-1") -> tuple[bytes, str]:
    """A multipart/related body written by hand, independent of pacsor.ai.multipart."""
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        for data in files
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def upload(client: httpx.Client, files: list[bytes], **headers: str) -> httpx.Response:
    body, ct = stow_body(files)
    return client.post(STUDIES, content=body, headers={"Content-Type": ct, **headers})


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    ct = response.headers["content-type"]
    boundary = ct.split("boundary=")[1].strip('"').encode()

    async def collect() -> list[tuple[dict[str, str], bytes]]:
        async def one_chunk() -> AsyncIterator[bytes]:
            yield response.content

        return [part async for part in iter_parts(one_chunk(), boundary)]

    return asyncio.run(collect())


def poll_until_done(client: httpx.Client, study_uid: str) -> list[str]:
    statuses = []
    for _ in range(10):
        response = conforms(client.get(f"/v3/studies/{study_uid}/status"), STATUS)
        assert response.status_code == 200
        statuses.append(response.json()["status"])
        if statuses[-1] == "done":
            return statuses
    raise AssertionError(f"never done: {statuses}")


@pytest.fixture
def client(simulator: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator[0], headers=AUTH, timeout=10) as client:
        yield client


def noisy_image(study_uid: str, rows: int = 64, cols: int = 64) -> pydicom.Dataset:
    """An image whose pixels no fallback gradient could imitate."""
    pixels = np.random.default_rng(7).integers(0, 4096, (rows, cols), dtype=np.uint16)
    return make_image(study_uid, rows=rows, cols=cols, PixelData=pixels.tobytes())


def test_upload_then_status_running_twice_then_done(
    client: httpx.Client, simulator: Simulator
) -> None:
    study = new_uid()
    images = [make_image(study), make_image(study)]
    response = conforms(upload(client, [to_bytes(ds) for ds in images]), STUDIES)
    assert response.status_code == 200
    assert response.json() == {"StudyInstanceUID": study, "message": "2 instance(s) received"}

    assert poll_until_done(client, study) == ["running", "running", "done"]
    snapshot = simulator[1].study(study)
    assert snapshot is not None
    assert snapshot.instances == {str(ds.SOPInstanceUID): 1 for ds in images}
    assert (snapshot.uploads, snapshot.status_polls) == (1, 3)


def test_uploaded_instances_are_files_on_disk(
    client: httpx.Client, simulator: Simulator
) -> None:
    study = new_uid()
    data = to_bytes(make_image(study))
    assert upload(client, [data]).status_code == 200
    assert upload(client, [data]).status_code == 200  # the same instance sent again

    state = simulator[1]
    snapshot = state.study(study)
    assert snapshot is not None and snapshot.uploads == 2
    assert list(snapshot.instances.values()) == [2]
    [(_, path)] = state.instance_paths(study)
    assert path.read_bytes() == data
    assert path.is_relative_to(state.staging_dir())


def test_results_are_secondary_captures_derived_from_the_inputs(
    client: httpx.Client,
) -> None:
    study = new_uid()
    small = noisy_image(study)
    large = make_image(study, rows=1024, cols=800, PatientID="P-77", AccessionNumber="A-77")
    assert upload(client, [to_bytes(small), to_bytes(large)]).status_code == 200
    poll_until_done(client, study)

    series: dict[str, str] = {}
    for command in ("smarturgences", "smartxpert"):
        params = {"inference_command": command}
        response = conforms(
            client.get(f"/v3/studies/{study}", params=params, headers={"Accept": DICOM_ACCEPT}),
            RESULTS,
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/related")
        parts = parse_multipart(response)
        assert [headers["content-type"] for headers, _ in parts] == ["application/dicom"] * 2
        objects = [pydicom.dcmread(io.BytesIO(body)) for _, body in parts]

        for source, result in zip((small, large), objects, strict=True):
            assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert result.SOPClassUID == SecondaryCaptureImageStorage
            assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
            assert result.StudyInstanceUID == study
            assert result.SOPInstanceUID == result_sop_uid(source.SOPInstanceUID, command)
            assert result.SOPInstanceUID.startswith("2.25.")
            assert result.SeriesInstanceUID == result_series_uid(study, command)
            assert result.SeriesInstanceUID != source.SeriesInstanceUID
            assert command in result.SeriesDescription
            for keyword in ("PatientID", "PatientName", "AccessionNumber"):
                assert result[keyword].value == source[keyword].value
            assert result.PhotometricInterpretation == "RGB"
            assert result.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        series[command] = objects[0].SeriesInstanceUID

        small_rgb, large_rgb = (result.pixel_array for result in objects)
        assert small_rgb.shape == (64, 64, 3) and small_rgb.dtype == np.uint8
        assert large_rgb.shape == (512, 400, 3)  # longest side scaled down to 512
        for rgb in (small_rgb, large_rgb):
            red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
            assert red.sum() > 20  # the bounding box
            assert len({tuple(pixel) for pixel in rgb[0]}) == 1  # a banner across the top
            assert not (rgb[0, 0, 0] == rgb[0, 0, 1] == rgb[0, 0, 2])  # ... in colour
        # Away from the overlay the pixels are the input's, rescaled to 8 bits.
        grey = (small_rgb[..., 0] == small_rgb[..., 1]) & (small_rgb[..., 1] == small_rgb[..., 2])
        grey[:8] = False
        source_pixels = small.pixel_array[grey].astype(float)
        assert np.corrcoef(source_pixels, small_rgb[..., 0][grey])[0, 1] > 0.98

        again = client.get(f"/v3/studies/{study}", params=params, headers={"Accept": DICOM_ACCEPT})
        assert parse_multipart(again) == parts  # the same objects, byte for byte
    assert series["smarturgences"] != series["smartxpert"]


def test_results_json_form_and_empty_output(client: httpx.Client) -> None:
    study = new_uid()
    assert upload(client, [to_bytes(make_image(study))]).status_code == 200
    params = {"inference_command": "smarturgences"}
    json_accept = {"Accept": "application/json"}

    early = conforms(
        client.get(f"/v3/studies/{study}", params=params, headers=json_accept), RESULTS
    )
    assert early.json()["status"] == "running"
    # Without application/json in Accept, the status comes inside a multipart answer.
    wrapped = conforms(client.get(f"/v3/studies/{study}", params=params), RESULTS)
    [(headers, body)] = parse_multipart(wrapped)
    assert headers["content-type"] == "application/json"
    assert b'"running"' in body

    poll_until_done(client, study)
    done = conforms(client.get(f"/v3/studies/{study}", params=params, headers=json_accept), RESULTS)
    assert done.json() == {
        "StudyInstanceUID": study,
        "status": "done",
        "version": done.json()["version"],
    }

    nothing = {**params, "output_selection": "none"}
    empty = conforms(client.get(f"/v3/studies/{study}", params=nothing), RESULTS)
    assert empty.status_code == 200 and parse_multipart(empty) == []
    empty_json = client.get(f"/v3/studies/{study}", params=nothing, headers=json_accept)
    assert conforms(empty_json, RESULTS).json()["status"] == "empty"


def test_findings_validate_and_point_inside_the_images(client: httpx.Client) -> None:
    study = new_uid()
    images = [make_image(study, rows=200, cols=100), make_image(study)]
    assert upload(client, [to_bytes(ds) for ds in images]).status_code == 200

    for route, pattern in ((SMARTURGENCES, "smarturgences"), (SMARTXPERT, "smartxpert")):
        running = conforms(client.get(f"/v3/{pattern}/{study}"), route)
        assert running.json()["status"] == "running"
    poll_until_done(client, study)

    urgences = conforms(client.get(f"/v3/smarturgences/{study}"), SMARTURGENCES).json()
    assert urgences["status"] == "done"
    assert urgences["flag"]["label"] == "abnormal"
    assert {f["label"] for f in urgences["findings"]} <= {"abnormal", "doubt", "normal"}
    assert [i["SOPInstanceUID"] for i in urgences["instances"]] == [
        ds.SOPInstanceUID for ds in images
    ]
    for instance, ds in zip(urgences["instances"], images, strict=True):
        [box] = instance["bounding_boxes"]
        (x0, y0), (x1, y1) = box["top_left"], box["bottom_right"]
        assert 0 <= x0 < x1 < ds.Columns and 0 <= y0 < y1 < ds.Rows

    xpert = conforms(client.get(f"/v3/smartxpert/{study}"), SMARTXPERT).json()
    measures = xpert["instances"][0]["measures"]
    assert {m["type"] for m in measures} == {"angle", "length"}
    assert next(m for m in measures if m["type"] == "length")["unit"] == "mm"
    assert conforms(client.get(f"/v3/smartxpert/{study}"), SMARTXPERT).json() == xpert


def test_missing_or_wrong_key_is_403(simulator: Simulator) -> None:
    study = new_uid()
    for headers in ({}, {"x-goog-meta-owner": "wrong"}):
        with httpx.Client(base_url=simulator[0], headers=headers) as client:
            response = conforms(upload(client, [to_bytes(make_image(study))]), STUDIES)
            assert response.status_code == 403 and "x-goog-meta-owner" in response.json()["message"]
            for path, pattern in (
                (f"/v3/studies/{study}/status", STATUS),
                (f"/v3/studies/{study}?inference_command=smarturgences", RESULTS),
                (f"/v3/smarturgences/{study}", SMARTURGENCES),
                (f"/v3/smartxpert/{study}", SMARTXPERT),
            ):
                assert conforms(client.get(path), pattern).status_code == 403
    assert simulator[1].study(study) is None


def test_unknown_study_is_404(client: httpx.Client) -> None:
    study = new_uid()
    for path, pattern in (
        (f"/v3/studies/{study}/status", STATUS),
        (f"/v3/studies/{study}?inference_command=smartxpert", RESULTS),
        (f"/v3/smarturgences/{study}", SMARTURGENCES),
        (f"/v3/smartxpert/{study}", SMARTXPERT),
    ):
        response = conforms(client.get(path), pattern)
        assert response.status_code == 404
        assert study in response.json()["message"]


def test_bad_query_is_422_in_fastapi_form(client: httpx.Client) -> None:
    study = new_uid()
    assert upload(client, [to_bytes(make_image(study))]).status_code == 200
    for query in ("", "?inference_command=nonsense", "?inference_command=smartxpert&language=xx"):
        response = conforms(client.get(f"/v3/studies/{study}{query}"), RESULTS)
        assert response.status_code == 422
        [problem] = response.json()["detail"]
        assert problem["loc"][0] == "query"
    # Commands in use beyond the OpenAPI enum are accepted.
    response = client.get(f"/v3/studies/{study}?inference_command=detection")
    assert response.status_code == 200


def _two_studies() -> tuple[bytes, str]:
    return stow_body([to_bytes(make_image(new_uid())), to_bytes(make_image(new_uid()))])


def _wrong_part_type() -> tuple[bytes, str]:
    body, ct = stow_body([to_bytes(make_image(new_uid()))])
    return body.replace(b"Content-Type: application/dicom", b"Content-Type: text/plain"), ct


@pytest.mark.parametrize(
    ("make_body", "expected"),
    [
        (lambda: stow_body([b"not dicom at all"]), "not a readable DICOM"),
        (lambda: stow_body([]), "no DICOM instance"),
        (lambda: (b"", "multipart/related; type=application/dicom"), "no boundary"),
        (lambda: (to_bytes(make_image(new_uid())), "application/dicom"), "multipart/related"),
        (
            lambda: (
                b"--b\r\nContent-Type: application/dicom\r\n\r\nabc",
                "multipart/related; boundary=b",
            ),
            "ended before",
        ),
        (_wrong_part_type, "expected application/dicom"),
        (_two_studies, "one study per request"),
    ],
)
def test_bad_upload_is_400_and_keeps_nothing(
    client: httpx.Client,
    simulator: Simulator,
    make_body: Callable[[], tuple[bytes, str]],
    expected: str,
) -> None:
    state = simulator[1]
    studies_before = set(state.study_uids())
    body, ct = make_body()
    response = conforms(client.post(STUDIES, content=body, headers={"Content-Type": ct}), STUDIES)
    assert response.status_code == 400
    assert expected in response.json()["message"]
    assert set(state.study_uids()) == studies_before
    assert not list(state.staging_dir().glob("staging-*"))  # half-received files removed


def test_injected_faults_then_success() -> None:
    settings = SimulatorSettings(running_polls=0, upload_faults=(429, 500), result_faults=(503,))
    with running_simulator(settings) as (url, state), httpx.Client(base_url=url) as client:
        study = new_uid()
        data = [to_bytes(make_image(study))]
        quota = conforms(upload(client, data), STUDIES)
        assert quota.status_code == 429
        assert quota.json() == {"message": "Exceeded quota"}
        assert quota.headers["retry-after"] == "1"
        failure = upload(client, data)  # the OpenAPI file lists no 500, but servers fail
        assert failure.status_code == 500 and "message" in failure.json()
        assert state.study(study) is None
        assert conforms(upload(client, data), STUDIES).status_code == 200
        assert state.upload_requests == 3

        path = f"/v3/studies/{study}?inference_command=smarturgences"
        assert client.get(path).status_code == 503
        assert client.get(path).status_code == 200


def test_state_directory_is_removed_on_exit() -> None:
    with running_simulator(SimulatorSettings()) as (url, state):
        study = new_uid()
        body, ct = stow_body([to_bytes(make_image(study))])
        assert httpx.post(f"{url}{STUDIES}", content=body, headers={"Content-Type": ct}).is_success
        root = state.staging_dir()
        assert root.is_dir()
    assert not Path(root).exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")


def test_settings_from_env() -> None:
    settings = settings_from_env(
        {
            "TOKEN": "abc",
            "SIMULATOR_RUNNING_POLLS": "5",
            "SIMULATOR_UPLOAD_FAULTS": "429, 500",
            "SIMULATOR_RESULT_FAULTS": "503",
            "SIMULATOR_NOT_READY_RESULTS": "1",
        }
    )
    assert settings == SimulatorSettings(
        token="abc",
        running_polls=5,
        upload_faults=(429, 500),
        result_faults=(503,),
        not_ready_results=1,
    )
    assert settings_from_env({"TOKEN": ""}) == SimulatorSettings()
    for name, value in (
        ("SIMULATOR_RUNNING_POLLS", "two"),
        ("SIMULATOR_RUNNING_POLLS", "-1"),
        ("SIMULATOR_UPLOAD_FAULTS", "429,abc"),
        ("SIMULATOR_RESULT_FAULTS", "200"),
        ("SIMULATOR_NOT_READY_RESULTS", "1.5"),
    ):
        with pytest.raises(ValueError, match=name):
            settings_from_env({name: value})
