"""The HTTP API of `napari-med3dvlm serve`: one model, the same engine the docks use, under ``/v1``.

A client uploads a volume once (`POST /v1/volumes`, content-hash id), asks the server to encode it
(features stay here, in the engine's cache), then sends prompts (`/v1/generate`, streamed as
server-sent events; `/v1/rank` for closed questions). Report and chat prompts are built by the
client with the shared prompt builder, so a report through a server is the report in-process.
``/docs`` is FastAPI's generated OpenAPI page.

What the server refuses, and how (every refusal is JSON ``{"detail": ...}`` with a sentence a user
can act on): a missing or wrong bearer token (401, compared in constant time); an upload over the
cap (413, counted while it arrives, before anything is parsed); an upload that stalls (408); a body
that is not NIfTI or a DICOM zip (415); a volume our readers refuse (422, the reader's message); an
id that is not 32 hex digits (422: it never reaches the cache); an unknown id (404, code
``unknown_volume``, so a client re-uploads after a restart). No patient identifier is logged or
returned: NIfTI carries none, and the DICOM reader keeps none in a `Volume`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from napari_med3dvlm import __version__
from napari_med3dvlm.inference import wire
from napari_med3dvlm.inference.engine import InferenceEngine, ModelUnavailableError
from napari_med3dvlm.io import VolumeReadError
from napari_med3dvlm.model import prompts

from .store import VolumeStore, read_upload

logger = logging.getLogger(__name__)

VolumeId = Annotated[str, PathParam(pattern=wire.VOLUME_ID.pattern, description="32 hex digits (content hash)")]


@dataclass
class Limits:
    """What one request may cost the server."""

    max_upload_bytes: int = 2 << 30
    #: Seconds without a byte arriving before an upload is abandoned (408).
    upload_idle_s: float = 30.0
    max_new_tokens: int = 1024
    max_prompt_chars: int = 64_000
    max_choices: int = 8
    max_search_k: int = 100


class GenerationSettings(BaseModel):
    """Sampling for one request; what is left out comes from the server's settings."""

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None


class GenerateRequest(BaseModel):
    volume_id: str = Field(pattern=wire.VOLUME_ID.pattern)
    prompt: str = Field(min_length=1)
    settings: GenerationSettings = GenerationSettings()


class RankRequest(BaseModel):
    volume_id: str = Field(pattern=wire.VOLUME_ID.pattern)
    prompt: str = Field(min_length=1)
    choices: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(min_length=2)


class ExplainRequest(BaseModel):
    """A span to explain: ``continuation[start:end]`` after ``prompt`` (see `relevance.SpanTarget`)."""

    prompt: str = Field(min_length=1)
    continuation: str = Field(min_length=1)
    start: int = Field(ge=0)
    end: int = Field(ge=1)
    label: str = Field("", max_length=200)
    method: str = "combined"


class TextRequest(BaseModel):
    text: str


class SearchRequest(BaseModel):
    text: str = Field(min_length=1)
    k: int = Field(10, ge=1)


def _fail(status: int, message: str, code: str | None = None):
    raise HTTPException(status, detail={"message": message, "code": code} if code else message)


def create_app(engine: InferenceEngine, token: str = "", limits: Limits | None = None,
               index_db: Path | None = None, cache_bytes: int = 4 << 30, workdir: Path | None = None) -> FastAPI:
    """The FastAPI app around one engine. ``token`` '' means no authentication (loopback only:
    `serve` refuses other addresses without one)."""
    limits = limits or Limits()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="med3dvlm-serve-"))
    store = VolumeStore(cache_bytes)
    app = FastAPI(title="napari-med3dvlm backend", version=__version__,
                  description="Med3DVLM report generation, visual question answering and retrieval for 3D CT/MRI.")
    app.state.engine, app.state.store, app.state.limits = engine, store, limits
    bearer = HTTPBearer(auto_error=False)

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token (send 'Authorization: Bearer TOKEN')",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)]

    @app.exception_handler(ModelUnavailableError)
    async def _model_error(_request, err: ModelUnavailableError):
        return JSONResponse(status_code=503, content={"detail": f"the model on the server is unavailable: {err}"})

    def volume_or_404(volume_id: str):
        volume = store.get(volume_id)
        if volume is None:
            _fail(404, f"no volume {volume_id} on this server (it restarted or dropped it); upload it again",
                  code="unknown_volume")
        return volume

    @app.get("/v1/health", dependencies=auth)
    def health():
        return {"status": "ok", "version": __version__, "model_loaded": engine.is_loaded,
                "volumes": len(store), "cache_bytes": store.nbytes}

    @app.get("/v1/model", dependencies=auth)
    def model_info():
        runtime = engine.runtime  # loads the model on first use
        return {"model_id": engine.model_id, "image_size": list(engine.image_size),
                "proj_out_num": engine.proj_out_num, "context_length": engine.context_length,
                "llm": engine.settings.llm, **runtime}

    @app.head("/v1/volumes/{volume_id}", dependencies=auth)
    def has_volume(volume_id: VolumeId):
        if volume_id not in store:
            raise HTTPException(404)
        return None

    @app.post("/v1/volumes", status_code=201, dependencies=auth)
    async def upload(request: Request, modality: str = "CT", plane: str = "axial", window: str = "",
                     series: int = 0):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (wire.NIFTI_GZ, wire.DICOM_ZIP, "application/octet-stream"):
            _fail(415, f"content type {content_type or 'none'!r} is not accepted: send gzip-compressed NIfTI "
                  f"({wire.NIFTI_GZ}) or a zip of one DICOM series ({wire.DICOM_ZIP})")
        try:
            facts = wire.check_params(modality, plane, window)
        except ValueError as err:
            _fail(422, str(err))
        body = await _read_body(request, limits)
        if not body:
            _fail(422, "the upload is empty")
        params = {"modality": facts["modality"], "plane": plane, "window": wire.window_text(facts["window"])}
        volume_id = wire.content_id(body, params)
        existed = volume_id in store
        if not existed:
            try:
                volume = await asyncio.to_thread(read_upload, body, content_type, facts, series, workdir)
            except VolumeReadError as err:
                _fail(422, str(err))
            store.put(volume_id, volume)
        volume = store.get(volume_id)
        return {"volume_id": volume_id, "existed": existed, "shape": list(volume.shape),
                "spacing": list(volume.spacing), "modality": volume.modality, "plane": volume.plane}

    @app.post("/v1/volumes/{volume_id}/encode", dependencies=auth)
    def encode(volume_id: VolumeId):
        volume = volume_or_404(volume_id)
        try:
            encoded = engine.encode(volume)
        except ValueError as err:  # a volume the preprocessing cannot read (one slice, ...)
            _fail(422, str(err))
        scope = engine.check_scope(volume, encoded)
        return {"transform": encoded.transform.__dict__, "scope": wire.scope_to_wire(scope)}

    @app.post("/v1/volumes/{volume_id}/explain", dependencies=auth)
    def explain(volume_id: VolumeId, body: ExplainRequest):
        """Where the model looked for a span: the relevance map on the model-input grid (float32,
        base64, C order, ``shape``); the client maps it onto its layer with the encode transform."""
        import base64

        import numpy as np

        from napari_med3dvlm.inference.relevance import METHODS, SpanTarget

        checked_prompt(body.prompt)
        if len(body.continuation) > limits.max_prompt_chars:
            _fail(413, f"text of {len(body.continuation)} characters is over the limit of {limits.max_prompt_chars}")
        if not body.start < body.end <= len(body.continuation):
            _fail(422, f"the span {body.start}..{body.end} is not inside the text ({len(body.continuation)} characters)")
        if body.method not in METHODS:
            _fail(422, f"method {body.method!r} is not one of {', '.join(METHODS)}")
        volume = volume_or_404(volume_id)
        target = SpanTarget(body.prompt, body.continuation, body.start, body.end, body.label)
        result = engine.explain(volume, target, body.method)
        array = np.ascontiguousarray(result.model_map, dtype=np.float32)
        return {"map": base64.b64encode(array.tobytes()).decode("ascii"), "shape": list(array.shape),
                "label": result.label, "span": result.span, "method": result.method,
                "log_likelihood": float(result.log_likelihood), "n_tokens": int(result.n_tokens),
                "duration_s": float(result.duration_s)}

    @app.post("/v1/tokens", dependencies=auth)
    def count_tokens(body: TextRequest):
        if len(body.text) > limits.max_prompt_chars:
            _fail(413, f"text of {len(body.text)} characters is over the limit of {limits.max_prompt_chars}")
        return {"count": engine.count_tokens(body.text)}

    def checked_prompt(prompt: str) -> None:
        """Size first (cheap), then the image placeholders the model's splice needs."""
        if len(prompt) > limits.max_prompt_chars:
            _fail(413, f"prompt of {len(prompt)} characters is over the limit of {limits.max_prompt_chars}")
        count = engine.proj_out_num
        if not prompt.startswith(prompts.image_prefix(count)):
            _fail(422, f"the prompt must start with the image placeholders: {count} x '{prompts.IMAGE_TOKEN}' "
                  "(GET /v1/model gives the count)")

    def prepare_generation(body: GenerateRequest):
        """Checks that must answer with a status code, before the event stream starts."""
        checked_prompt(body.prompt)
        if (body.settings.max_new_tokens or 0) > limits.max_new_tokens:
            _fail(422, f"max_new_tokens {body.settings.max_new_tokens} is over this server's limit of "
                  f"{limits.max_new_tokens}")
        return body, volume_or_404(body.volume_id)

    @app.post("/v1/generate", response_class=EventSourceResponse, dependencies=auth)
    async def generate(prepared: tuple = Depends(prepare_generation)):
        """Text pieces as `token` events, then `done`; an `error` event if the model fails midway.
        A client that disconnects stops generation at the next token."""
        body, volume = prepared
        settings = engine.settings.updated(**body.settings.model_dump(exclude_none=True))
        cancel = threading.Event()

        def pieces():
            return engine.stream(body.prompt, engine.encode(volume), settings, cancel)

        try:
            async for kind, value in _pump(pieces, cancel):
                if kind == "piece":
                    yield ServerSentEvent(event="token", data={"text": value})
                else:
                    logger.warning("generation failed: %s", type(value).__name__)
                    yield ServerSentEvent(event="error", data={"message": str(value)})
                    return
            yield ServerSentEvent(event="done", data={"stopped": False})
        finally:
            cancel.set()  # the client went away, or we are done: stop at the next token

    @app.post("/v1/rank", dependencies=auth)
    def rank(body: RankRequest):
        checked_prompt(body.prompt)
        if len(body.choices) > limits.max_choices:
            _fail(422, f"{len(body.choices)} choices are over the limit of {limits.max_choices}")
        volume = volume_or_404(body.volume_id)
        scores = engine.rank_choices(body.prompt, body.choices, engine.encode(volume))
        return {"scores": scores}

    @functools.cache
    def index():
        """The server's index, opened once (it follows the table's versions itself)."""
        from napari_med3dvlm.retrieval.store import VolumeIndex

        return VolumeIndex(index_db)

    @app.post("/v1/search", dependencies=auth)
    def search(body: SearchRequest):
        if index_db is None:
            _fail(404, "this server has no retrieval index; start it with `serve --index DB`")
        if body.k > limits.max_search_k:
            _fail(422, f"k={body.k} is over the limit of {limits.max_search_k}")
        from napari_med3dvlm.retrieval.embedder import get_embedder
        from napari_med3dvlm.retrieval.search import search_text

        s = engine.settings
        embedder = get_embedder(s.model_source, s.device, s.dtype)
        try:
            hits = search_text(index(), embedder, body.text, k=body.k)
        except ValueError as err:
            _fail(422, str(err))
        from napari_med3dvlm.retrieval.remote import hit_to_wire

        return {"hits": [hit_to_wire(hit) for hit in hits]}

    return app


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refused with 413 as soon as it passes the cap (announced or counted) and
    with 408 when no byte arrives for ``upload_idle_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
        _fail(413, f"upload of {int(declared)} bytes is over this server's limit of {limits.max_upload_bytes}")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=limits.upload_idle_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            _fail(408, f"the upload stalled (no data for {limits.upload_idle_s:.0f} s); send it again")
        size += len(chunk)
        if size > limits.max_upload_bytes:
            _fail(413, f"upload is over this server's limit of {limits.max_upload_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _pump(start, cancel: threading.Event):
    """Run a blocking piece generator in a thread and yield ("piece", text) / ("error", exc) here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def run():
        try:
            for piece in start():
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                if cancel.is_set():
                    break
        except Exception as err:  # noqa: BLE001 - reported to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", err))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    worker = threading.Thread(target=run, name="med3dvlm-serve-generate", daemon=True)
    worker.start()
    while True:
        item = await queue.get()
        if item is done:
            return
        yield item
