"""Queries: text, a whole report, or a volume (say, the layer on screen) -> the most similar volumes."""

from __future__ import annotations

import numpy as np

from napari_med3dvlm.io import Volume, model_input

from .embedder import Embedder
from .store import SearchHit, VolumeIndex


def _check_model(index: VolumeIndex, embedder: Embedder) -> None:
    if index.model_id is not None and index.model_id != embedder.model_id:
        raise ValueError(
            f"this index was built with model {index.model_id!r}, not {embedder.model_id!r}: "
            "re-index the folders with the current model"
        )


def search_text(index: VolumeIndex, embedder: Embedder, text: str, k: int = 10) -> list[SearchHit]:
    """Text -> images through the SigLIP text tower; a full report works as well as a phrase."""
    text = (text or "").strip()
    if not text:
        raise ValueError("empty query")
    _check_model(index, embedder)
    return index.search(embedder.embed_texts([text])[0], k=k)


def search_volume(
    index: VolumeIndex,
    embedder: Embedder,
    volume: Volume | np.ndarray,
    modality: str = "CT",
    k: int = 10,
    plane: str | None = None,
) -> list[SearchHit]:
    """Image -> images: the query goes through the same `io.model_input` as indexed volumes.

    ``volume`` is a `Volume` (from our readers, or built from a layer), or a display-ordered
    (z, y, x) array with its ``modality`` and acquisition ``plane``.
    """
    _check_model(index, embedder)
    if not isinstance(volume, Volume):
        volume = Volume(np.asarray(volume), modality=modality, plane=plane or "axial")
    image, _ = model_input(volume, embedder.spatial_size, embedder.window)
    return index.search(embedder.embed_volumes(image)[0], k=k)
