"""``/v1/volumes``: upload once by content hash (bounded and timed while it arrives), ask whether the
server still holds a volume, encode it (features stay in the engine's cache), and explain a span
of text on it (a relevance map on the model-input grid)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from napari_med3dvlm.inference import wire
from napari_med3dvlm.io import VolumeReadError

from .deps import AUTH, Engine, Limited, Limits, Store, VolumeId, check_text_size, checked_prompt, fail, volume_or_404
from .store import read_upload

router = APIRouter()


class ExplainRequest(BaseModel):
    """A span to explain: ``continuation[start:end]`` after ``prompt`` (see `relevance.SpanTarget`)."""

    prompt: str = Field(min_length=1)
    continuation: str = Field(min_length=1)
    start: int = Field(ge=0)
    end: int = Field(ge=1)
    label: str = Field("", max_length=200)
    method: str = "combined"


@router.head("/v1/volumes/{volume_id}", dependencies=AUTH)
def has_volume(volume_id: VolumeId, store: Store):
    if volume_id not in store:
        raise HTTPException(404)
    return None


@router.post("/v1/volumes", status_code=201, dependencies=AUTH)
async def upload(request: Request, store: Store, limits: Limited, modality: str = "CT", plane: str = "axial",
                 window: str = "", series: int = 0):
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (wire.NIFTI_GZ, wire.DICOM_ZIP, "application/octet-stream"):
        fail(415, f"content type {content_type or 'none'!r} is not accepted: send gzip-compressed NIfTI "
             f"({wire.NIFTI_GZ}) or a zip of one DICOM series ({wire.DICOM_ZIP})")
    try:
        facts = wire.check_params(modality, plane, window)
    except ValueError as err:
        fail(422, str(err))
    body = await read_body(request, limits)
    if not body:
        fail(422, "the upload is empty")
    params = {"modality": facts["modality"], "plane": plane, "window": wire.window_text(facts["window"])}
    volume_id = wire.content_id(body, params)
    existed = volume_id in store
    if not existed:
        try:
            volume = await asyncio.to_thread(read_upload, body, content_type, facts, series,
                                             request.app.state.workdir)
        except VolumeReadError as err:
            fail(422, str(err))
        store.put(volume_id, volume)
    volume = store.get(volume_id)
    return {"volume_id": volume_id, "existed": existed, "shape": list(volume.shape),
            "spacing": list(volume.spacing), "modality": volume.modality, "plane": volume.plane}


@router.post("/v1/volumes/{volume_id}/encode", dependencies=AUTH)
def encode(volume_id: VolumeId, engine: Engine, store: Store):
    volume = volume_or_404(store, volume_id)
    try:
        encoded = engine.encode(volume)
    except ValueError as err:  # a volume the preprocessing cannot read (one slice, ...)
        fail(422, str(err))
    scope = engine.check_scope(volume, encoded)
    return {"transform": encoded.transform.__dict__, "scope": wire.scope_to_wire(scope)}


@router.post("/v1/volumes/{volume_id}/explain", dependencies=AUTH)
def explain(volume_id: VolumeId, body: ExplainRequest, engine: Engine, store: Store, limits: Limited):
    """Where the model looked for a span: the relevance map on the model-input grid (float32,
    base64, C order, ``shape``); the client maps it onto its layer with the encode transform."""
    import base64

    import numpy as np

    from napari_med3dvlm.inference.relevance import METHODS, SpanTarget

    checked_prompt(body.prompt, engine, limits)
    check_text_size(body.continuation, limits)
    if not body.start < body.end <= len(body.continuation):
        fail(422, f"the span {body.start}..{body.end} is not inside the text ({len(body.continuation)} characters)")
    if body.method not in METHODS:
        fail(422, f"method {body.method!r} is not one of {', '.join(METHODS)}")
    volume = volume_or_404(store, volume_id)
    target = SpanTarget(body.prompt, body.continuation, body.start, body.end, body.label)
    result = engine.explain(volume, target, body.method)
    array = np.ascontiguousarray(result.model_map, dtype=np.float32)
    return {"map": base64.b64encode(array.tobytes()).decode("ascii"), "shape": list(array.shape),
            "label": result.label, "span": result.span, "method": result.method,
            "log_likelihood": float(result.log_likelihood), "n_tokens": int(result.n_tokens),
            "duration_s": float(result.duration_s)}


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused with 413 as soon as it passes the cap (announced or counted) and
    with 408 when no byte arrives for ``upload_idle_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        fail(413, f"upload of {int(declared)} bytes is over this server's limit of {limits.max_upload_bytes}")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=limits.upload_idle_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            fail(408, f"the upload stalled (no data for {limits.upload_idle_s:.0f} s); send it again")
        size += len(chunk)
        if size > limits.max_upload_bytes:
            fail(413, f"upload is over this server's limit of {limits.max_upload_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
