"""Hostile and broken requests: each gets a 4xx with a sentence that says what is wrong, and the
server answers the next good request as before. The app runs in-process (FastAPI's TestClient) with
the tiny test model; the stalled upload needs a real socket and a real server process."""

import gzip
import io
import socket
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, wire
from napari_med3dvlm.io import Volume
from napari_med3dvlm.server import Limits, create_app

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    engine = InferenceEngine(InferenceSettings(model_source=str(tiny_model_dir), device="cpu", max_new_tokens=8))
    app = create_app(engine, token=TOKEN, limits=Limits(max_upload_bytes=4 << 20, max_new_tokens=64),
                     workdir=tmp_path_factory.mktemp("serve-work"))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def good_upload(ct_volume_module):
    volume = Volume(ct_volume_module, spacing=(2.5, 0.8, 0.8))
    return wire.nifti_bytes(volume), wire.volume_params(volume)


@pytest.fixture(scope="module")
def ct_volume_module():
    z, y, x = np.mgrid[:24, :48, :48]
    data = np.full((24, 48, 48), -1000, dtype=np.int16)
    data[((y - 24) / 20) ** 2 + ((x - 24) / 22) ** 2 < 1] = 40
    return data


def upload(client, body, params=None, content_type=wire.NIFTI_GZ, headers=AUTH):
    return client.post("/v1/volumes", content=body, params=params or {"modality": "CT", "plane": "axial"},
                       headers={**headers, "Content-Type": content_type})


def assert_still_serving(client, good_upload):
    body, params = good_upload
    reply = upload(client, body, params)
    assert reply.status_code == 201, reply.text
    volume_id = reply.json()["volume_id"]
    assert volume_id == wire.content_id(body, params)
    count = client.get("/v1/model", headers=AUTH).json()["proj_out_num"]
    with client.stream("POST", "/v1/generate", headers=AUTH,
                       json={"volume_id": volume_id, "prompt": "<im_patch>" * count + "Describe.",
                             "settings": {"max_new_tokens": 4}}) as events:
        text = "".join(events.iter_text())
    assert events.status_code == 200 and "event: done" in text


def message(reply) -> str:
    detail = reply.json()["detail"]
    return detail["message"] if isinstance(detail, dict) else str(detail)


def _nifti_gz(data: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes(), mtime=0)


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slice.dcm", b"\0" * (300 << 20))
    return buffer.getvalue()


def _zip_without_dicom() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", b"no images here")
    return buffer.getvalue()


ID = "0" * 32
PROMPT = {"volume_id": ID, "prompt": "Describe."}


def IMAGE_PROMPT(client):  # noqa: N802 - a prompt the model accepts, for an id it does not hold
    count = client.get("/v1/model", headers=AUTH).json()["proj_out_num"]
    return {"volume_id": ID, "prompt": "<im_patch>" * count + "Describe."}


def _cases(good_body):
    """(name, request-making function of the client, expected status, a phrase the message holds)."""
    return [
        ("no token", lambda c: c.get("/v1/model"), 401, "token"),
        ("wrong token", lambda c: c.get("/v1/model", headers={"Authorization": "Bearer guess"}), 401, "token"),
        ("basic auth instead of bearer", lambda c: c.get("/v1/model", headers={"Authorization": "Basic eDp5"}), 401,
         "token"),
        ("token in the query", lambda c: c.get("/v1/model", params={"token": TOKEN}), 401, "token"),
        ("upload without token", lambda c: upload(c, good_body, headers={}), 401, "token"),
        ("oversized upload (declared)",
         lambda c: c.post("/v1/volumes", content=b"\0" * (5 << 20), headers={**AUTH, "Content-Type": wire.NIFTI_GZ}),
         413, "limit"),
        ("oversized upload (chunked)",
         lambda c: c.post("/v1/volumes", content=iter([b"\0" * (1 << 20)] * 6),
                          headers={**AUTH, "Content-Type": wire.NIFTI_GZ}), 413, "limit"),
        ("empty upload", lambda c: upload(c, b""), 422, "empty"),
        ("truncated NIfTI", lambda c: upload(c, good_body[: len(good_body) // 2]), 422, ""),
        ("random bytes as NIfTI", lambda c: upload(c, b"\x1f\x8b" + bytes(range(256)) * 40), 422, ""),
        ("plain bytes, not NIfTI", lambda c: upload(c, b"hello, this is not an image" * 20,
                                                   content_type="application/octet-stream"), 422, ""),
        ("single slice", lambda c: upload(c, _nifti_gz(np.zeros((32, 32, 1), np.int16))), 422, "slice"),
        ("zip bomb", lambda c: upload(c, _zip_bomb(), content_type=wire.DICOM_ZIP), 422, ""),
        ("zip without DICOM", lambda c: upload(c, _zip_without_dicom(), content_type=wire.DICOM_ZIP), 422, ""),
        ("wrong content type", lambda c: upload(c, good_body, content_type="text/plain"), 415, "content type"),
        ("JSON as an upload", lambda c: c.post("/v1/volumes", json={"volume": "x"}, headers=AUTH), 415,
         "content type"),
        ("unknown modality", lambda c: upload(c, good_body, {"modality": "C T!", "plane": "axial"}), 422, "modality"),
        ("unknown plane", lambda c: upload(c, good_body, {"modality": "CT", "plane": "oblique"}), 422, "plane"),
        ("bad window", lambda c: upload(c, good_body, {"modality": "CT", "plane": "axial", "window": "40,-5"}), 422,
         "window"),
        ("unknown volume id", lambda c: c.post(f"/v1/volumes/{ID}/encode", headers=AUTH), 404, "upload it again"),
        ("traversal id", lambda c: c.post("/v1/volumes/..%2F..%2Fetc%2Fpasswd/encode", headers=AUTH), (404, 422), ""),
        ("id with bad characters", lambda c: c.post("/v1/volumes/ZZZZ0000000000000000000000000000/encode",
                                                     headers=AUTH), 422, ""),
        ("generate for an unknown volume", lambda c: c.post("/v1/generate", json=IMAGE_PROMPT(c), headers=AUTH), 404,
         "upload it again"),
        ("generate with a path as id", lambda c: c.post("/v1/generate", json={**PROMPT, "volume_id": "../x"},
                                                        headers=AUTH), 422, ""),
        ("prompt without the image placeholders", lambda c: c.post("/v1/generate", json=PROMPT, headers=AUTH),
         422, "placeholders"),
        ("generate without a prompt", lambda c: c.post("/v1/generate", json={"volume_id": ID}, headers=AUTH), 422, ""),
        ("negative max_new_tokens", lambda c: c.post("/v1/generate", headers=AUTH,
                                                     json={**PROMPT, "settings": {"max_new_tokens": -1}}), 422, ""),
        ("max_new_tokens over the limit", lambda c: c.post("/v1/generate", headers=AUTH,
                                                           json={**IMAGE_PROMPT(c), "settings": {"max_new_tokens": 10**6}}),
         422, "limit"),
        ("prompt over the limit", lambda c: c.post("/v1/generate", headers=AUTH,
                                                   json={**PROMPT, "prompt": "x" * 100_000}), 413, "limit"),
        ("malformed JSON", lambda c: c.post("/v1/generate", content=b"{not json",
                                            headers={**AUTH, "Content-Type": "application/json"}), 422, ""),
        ("explain an unknown volume", lambda c: c.post(f"/v1/volumes/{ID}/explain", headers=AUTH, json={
            **IMAGE_PROMPT(c), "continuation": "A cyst.", "start": 0, "end": 7}), 404, "upload it again"),
        ("explain a span outside the text", lambda c: c.post(f"/v1/volumes/{ID}/explain", headers=AUTH, json={
            **IMAGE_PROMPT(c), "continuation": "A cyst.", "start": 3, "end": 99}), 422, "span"),
        ("explain with an unknown method", lambda c: c.post(f"/v1/volumes/{ID}/explain", headers=AUTH, json={
            **IMAGE_PROMPT(c), "continuation": "A cyst.", "start": 0, "end": 7, "method": "magic"}), 422, "method"),
        ("rank with one choice", lambda c: c.post("/v1/rank", json={**PROMPT, "choices": ["a"]}, headers=AUTH), 422,
         ""),
        ("rank with non-text choices", lambda c: c.post("/v1/rank", json={**PROMPT, "choices": [{}, []]},
                                                        headers=AUTH), 422, ""),
        ("count tokens of a huge text", lambda c: c.post("/v1/tokens", json={"text": "x" * 100_000}, headers=AUTH),
         413, "limit"),
        ("search without an index", lambda c: c.post("/v1/search", json={"text": "liver"}, headers=AUTH), 404,
         "no retrieval index"),
        ("unknown endpoint", lambda c: c.get("/v1/shell", headers=AUTH), 404, ""),
        ("wrong method", lambda c: c.delete("/v1/model", headers=AUTH), 405, ""),
    ]


def test_each_hostile_request_gets_a_clear_4xx_and_the_server_keeps_serving(client, good_upload):
    cases = _cases(good_upload[0])
    assert len(cases) >= 25
    for name, make, status, phrase in cases:
        reply = make(client)
        expected = status if isinstance(status, tuple) else (status,)
        assert reply.status_code in expected, f"{name}: {reply.status_code} {reply.text[:300]}"
        assert reply.headers["content-type"].startswith("application/json"), name
        text = message(reply)
        assert text and (phrase.lower() in text.lower()), f"{name}: {text!r}"
        assert TOKEN not in reply.text, name
    assert_still_serving(client, good_upload)


def test_the_same_volume_uploaded_twice_is_stored_once(client, good_upload):
    body, params = good_upload
    first, second = upload(client, body, params).json(), upload(client, body, params).json()
    assert first["volume_id"] == second["volume_id"] and second["existed"]
    assert client.head(f"/v1/volumes/{first['volume_id']}", headers=AUTH).status_code == 200


def test_openapi_docs_are_generated(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/volumes", "/v1/generate", "/v1/rank", "/v1/search", "/v1/model"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.slow
def test_a_stalled_upload_is_dropped_and_the_server_goes_on(tiny_model_dir, tmp_path, good_upload):
    from serving import TOKEN as SERVER_TOKEN, start_server, stop_server

    process, url = start_server(["--model", str(tiny_model_dir), "--device", "cpu", "--upload-timeout", "1"],
                                tmp_path / "config", tmp_path / "serve.log")
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Type: application/gzip\r\n"
                + f"Authorization: Bearer {SERVER_TOKEN}\r\nContent-Length: 100000\r\n\r\n".encode() + b"\x1f\x8b"
            )
            started = time.monotonic()
            reply = b""
            while b"stalled" not in reply:  # headers and body may come in separate packets
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode(errors="replace")
        assert " 408 " in reply.splitlines()[0] and "stalled" in reply
        assert time.monotonic() - started < 8
        import httpx

        body, params = good_upload
        good = httpx.post(f"{url}/v1/volumes", content=body, params=params,
                          headers={"Authorization": f"Bearer {SERVER_TOKEN}", "Content-Type": wire.NIFTI_GZ})
        assert good.status_code == 201
    finally:
        stop_server(process)
