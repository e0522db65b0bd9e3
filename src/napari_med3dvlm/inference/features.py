"""Image-feature caching: encoding a volume costs seconds, so each volume is encoded once per model
and window, and every report or chat turn about it reuses the features.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from napari_med3dvlm.io import PreprocessTransform

#: Samples per axis used for the signature: enough to tell volumes apart, cheap on 512^3 arrays.
SIGNATURE_SAMPLES_PER_AXIS = 64


@dataclass(frozen=True)
class EncodedImage:
    """Image features ready for ``generate`` plus how the volume was turned into model input."""

    features: torch.Tensor
    transform: PreprocessTransform
    signature: str


def volume_signature(data, window=None, model_id: str = "", modality: str = "") -> str:
    """A short, stable key for (data, window, model): hash of a strided sample plus shape/dtype.

    Works on numpy and array-likes (dask, zarr) by only reading the sample. The hash is one-way, so
    it carries no image content or identifier into logs and exports.
    """
    shape = tuple(int(s) for s in data.shape)
    steps = tuple(slice(None, None, max(1, n // SIGNATURE_SAMPLES_PER_AXIS)) for n in shape)
    sample = np.ascontiguousarray(np.asarray(data[steps]))
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr((shape, str(np.dtype(data.dtype)), _window_key(window), model_id, modality)).encode())
    digest.update(sample.tobytes())
    return digest.hexdigest()


def _window_key(window):
    if window is None or isinstance(window, str):
        return window
    return tuple(round(float(v), 3) for v in window)


class FeatureCache:
    """A small thread-safe LRU of encoded images (features live on the model's device)."""

    def __init__(self, max_items: int = 8):
        self.max_items = max_items
        self._items: OrderedDict[str, EncodedImage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> EncodedImage | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, item: EncodedImage) -> None:
        with self._lock:
            self._items[item.signature] = item
            self._items.move_to_end(item.signature)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
