"""``/v1/health`` and ``/v1/model``: is the server up, and which model answers (loaded on first ask)."""

from __future__ import annotations

from fastapi import APIRouter

from napari_med3dvlm import __version__

from .deps import AUTH, Engine, Store

router = APIRouter()


@router.get("/v1/health", dependencies=AUTH)
def health(engine: Engine, store: Store):
    return {"status": "ok", "version": __version__, "model_loaded": engine.is_loaded,
            "volumes": len(store), "cache_bytes": store.nbytes}


@router.get("/v1/model", dependencies=AUTH)
def model_info(engine: Engine):
    runtime = engine.runtime  # loads the model on first use
    return {"model_id": engine.model_id, "image_size": list(engine.image_size),
            "proj_out_num": engine.proj_out_num, "context_length": engine.context_length,
            "llm": engine.settings.llm, **runtime}
