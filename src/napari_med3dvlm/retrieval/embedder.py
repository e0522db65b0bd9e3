"""What the index needs from a model: unit vectors for volumes and for texts in one shared space.

The index and search code only see the small ``Embedder`` protocol, so they run the same with the
SigLIP dual encoder, a model on another device, or a counting stand-in in tests.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Embedder(Protocol):
    #: Stored with every row: vectors from different models never mix in one search.
    model_id: str
    #: The (D, H, W) model input size handed to ``io.model_input``.
    spatial_size: tuple[int, int, int]
    #: The display window for preprocessing (None: the modality default, as in inference).
    window: object

    def embed_volumes(self, images: torch.Tensor) -> np.ndarray:
        """(B, 1, D, H, W) preprocessed volumes -> (B, E) float32 unit vectors."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts (queries or whole reports) -> (B, E) float32 unit vectors."""


def _unit(vectors: torch.Tensor) -> np.ndarray:
    array = vectors.detach().float().cpu().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.maximum(norms, 1e-12)).astype(np.float32)


class SigLIPEmbedder:
    """Wraps a SigLIP dual encoder (``encode_image`` / ``encode_text``) and its tokenizer."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        model_id: str,
        spatial_size: Sequence[int],
        window=None,
        max_length: int = 512,
        device: str | torch.device | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.window = window
        self.max_length = max_length
        self.scope_profile = None  # model.scope.ScopeProfile: set by from_source
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # One model shared by GUI workers and a CLI run: forward passes must not interleave.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def embed_volumes(self, images: torch.Tensor) -> np.ndarray:
        with self._lock:
            dtype = next(self.model.parameters()).dtype
            return _unit(self.model.encode_image(images.to(self.device, dtype)))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with self._lock:
            out = self.model.encode_text(
                batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            )
            return _unit(out)

    @classmethod
    def from_source(
        cls, source: str = "embedded", device: str | None = None, window=None, dtype: str | torch.dtype | None = "auto"
    ) -> "SigLIPEmbedder":
        """The SigLIP part of a model folder, a hub id or the embedded demo model, on ``device`` in
        ``dtype`` as the one device policy (`model.device`) resolves them."""
        from napari_med3dvlm.model import load_siglip
        from napari_med3dvlm.model.device import dtype_for, get_device

        device = str(get_device(device or "cpu"))
        model, tokenizer = load_siglip(source, device=device, dtype=dtype_for(device, dtype))
        if tokenizer is None:
            raise ValueError(f"the SigLIP model in {source!r} has no tokenizer files; text search needs them")
        embedder = cls(
            model,
            tokenizer,
            model_id=model_fingerprint(source),
            spatial_size=_model_input_size(model),
            window=window,
            # Queries are truncated like the training reports were (when the config records it).
            max_length=int(getattr(model.config, "text_max_length", None) or 512),
            device=device,
        )
        from napari_med3dvlm.model.scope import profile_for

        # What the model was trained on: indexed volumes outside it are marked (model/scope.py).
        embedder.scope_profile = profile_for(source)
        return embedder


def model_fingerprint(source: str) -> str:
    """A model id that changes when the weights change (a retrained demo keeps its name, not its
    vectors) and only then (a copy or a reinstall of the same files keeps its index), without naming
    local folders (they may carry a user name)."""
    from napari_med3dvlm.model.loading import resolve_source
    from napari_med3dvlm.model.sources import content_fingerprint, display_model_id

    folder = Path(resolve_source(source))
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".safetensors"))
    return f"{display_model_id(str(source))}@{content_fingerprint(files, root=folder)[:12]}"


def _model_input_size(model) -> tuple[int, int, int]:
    """(D, H, W) the encoder was trained at; SigLIP configs store ``input_size`` in the reference's
    (H, W, D) order."""
    from napari_med3dvlm.model.configuration import from_reference_order

    size = getattr(getattr(model, "config", None), "input_size", None)
    if size is not None and len(size) == 3:
        return from_reference_order(size)
    from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE

    return PUBLISHED_INPUT_SIZE


_cache: dict[tuple, SigLIPEmbedder] = {}
_cache_lock = threading.Lock()


def get_embedder(source: str | None = None, device: str | None = None, dtype: str | None = None) -> SigLIPEmbedder:
    """One loaded SigLIP per (source, device, dtype) for the whole process: the dock and a CLI run in
    the same interpreter share it. What is None comes from the saved settings (the dock passes the
    session's Settings instead); device and dtype go through the one policy of `model.device`."""
    from napari_med3dvlm.model.device import dtype_for, get_device

    if source is None or device is None or dtype is None:
        from napari_med3dvlm.settings import load_settings

        settings = load_settings()
        source = source or settings.model_source
        device = device or settings.device
        dtype = dtype or settings.dtype
    device = str(get_device(device))
    dtype = dtype_for(device, dtype)
    key = (str(source), device, str(dtype))
    with _cache_lock:
        if key not in _cache:
            _cache.clear()  # one model at a time: they are hundreds of MB
            _cache[key] = SigLIPEmbedder.from_source(source, device=device, dtype=dtype)
        return _cache[key]
