"""``/v1/search``: text search in the index the server was started with (`serve --index DB`),
opened once per app (it follows the table's versions itself)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from .deps import AUTH, Engine, Limited, fail

router = APIRouter()


class SearchRequest(BaseModel):
    text: str = Field(min_length=1)
    k: int = Field(10, ge=1)


def open_index(index_db):
    """The retrieval index at ``index_db`` (imported here: a server without one never loads LanceDB)."""
    from napari_med3dvlm.retrieval.store import VolumeIndex

    return VolumeIndex(index_db)


@router.post("/v1/search", dependencies=AUTH)
def search(body: SearchRequest, request: Request, engine: Engine, limits: Limited):
    if request.app.state.index_db is None:
        fail(404, "this server has no retrieval index; start it with `serve --index DB`")
    if body.k > limits.max_search_k:
        fail(422, f"k={body.k} is over the limit of {limits.max_search_k}")
    from napari_med3dvlm.retrieval.embedder import get_embedder
    from napari_med3dvlm.retrieval.search import search_text

    s = engine.settings
    embedder = get_embedder(s.model_source, s.device, s.dtype)
    try:
        hits = search_text(request.app.state.index(), embedder, body.text, k=body.k)
    except ValueError as err:
        fail(422, str(err))
    from napari_med3dvlm.retrieval.remote import hit_to_wire

    return {"hits": [hit_to_wire(hit) for hit in hits]}
