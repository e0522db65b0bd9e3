"""The HTTP API of `napari-med3dvlm serve`: one model, the same engine the docks use, under ``/v1``.

A client uploads a volume once (`POST /v1/volumes`, content-hash id), asks the server to encode it
(features stay here, in the engine's cache), then sends prompts (`/v1/generate`, streamed as
server-sent events; `/v1/rank` for closed questions). Report and chat prompts are built by the
client with the shared prompt builder, so a report through a server is the report in-process.
``/docs`` is FastAPI's generated OpenAPI page. The routes live by area (`info`, `volumes`,
`generation`, `search`); what they share (limits, refusals, the token check, the app's state) is in
`deps`.

What the server refuses, and how (every refusal is JSON ``{"detail": ...}`` with a sentence a user
can act on): a missing or wrong bearer token (401, compared in constant time); an upload over the
cap (413, counted while it arrives, before anything is parsed); an upload that stalls (408); a body
that is not NIfTI or a DICOM zip (415); a volume our readers refuse (422, the reader's message); an
id that is not 32 hex digits (422: it never reaches the cache); an unknown id (404, code
``unknown_volume``, so a client re-uploads after a restart). No patient identifier is logged or
returned: NIfTI carries none, and the DICOM reader keeps none in a `Volume`.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from napari_med3dvlm import __version__
from napari_med3dvlm.inference.engine import InferenceEngine, ModelUnavailableError

from . import generation, info, search, volumes
from .deps import Limits
from .store import VolumeStore

__all__ = ["Limits", "create_app"]


def create_app(engine: InferenceEngine, token: str = "", limits: Limits | None = None,
               index_db: Path | None = None, cache_bytes: int = 4 << 30, workdir: Path | None = None) -> FastAPI:
    """The FastAPI app around one engine. ``token`` '' means no authentication (loopback only:
    `serve` refuses other addresses without one)."""
    app = FastAPI(title="napari-med3dvlm backend", version=__version__,
                  description="Med3DVLM report generation, visual question answering and retrieval for 3D CT/MRI.")
    app.state.engine, app.state.store, app.state.limits = engine, VolumeStore(cache_bytes), limits or Limits()
    app.state.token = token
    app.state.workdir = Path(workdir or tempfile.mkdtemp(prefix="med3dvlm-serve-"))
    app.state.index_db = index_db
    app.state.index = functools.cache(functools.partial(search.open_index, index_db))

    @app.exception_handler(ModelUnavailableError)
    async def _model_error(_request, err: ModelUnavailableError):
        return JSONResponse(status_code=503, content={"detail": f"the model on the server is unavailable: {err}"})

    for area in (info, volumes, generation, search):  # this order is the order of /docs
        app.include_router(area.router)
    return app
