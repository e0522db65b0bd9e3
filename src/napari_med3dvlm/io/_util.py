"""Small shared pieces: identifier hashing and cheap sampling of large arrays."""

from __future__ import annotations

import hashlib

import numpy as np


class VolumeReadError(ValueError):
    """A file or folder that looks like ours but cannot be read as a volume."""


def short_hash(text: str, length: int = 10) -> str:
    """A stable, non-reversible stand-in for an identifier (UIDs, paths) in names and logs."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:length]


def sample_slices(array: np.ndarray, count: int = 8) -> np.ndarray:
    """A few whole slices along the array's outermost-in-memory axis.

    Statistics (modality guess, percentiles) then read a few contiguous blocks of a memory-mapped
    file instead of every page of it.
    """
    axis = int(np.argmax(np.abs(array.strides)))
    n = array.shape[axis]
    if n <= count:
        return np.asarray(array)
    index = np.unique(np.linspace(0, n - 1, count).round().astype(int))
    # Basic indexing per slice: np.take would first make the whole (strided) array contiguous.
    return np.stack([array[_along(axis, i)] for i in index], axis=axis)


def count_nans(array: np.ndarray) -> int:
    """NaN voxels, counted slice by slice so no volume-sized temporary is made."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    axis = int(np.argmax(np.abs(array.strides)))
    return int(sum(np.isnan(array[_along(axis, i)]).sum() for i in range(array.shape[axis])))


def _along(axis: int, index: int) -> tuple:
    return (slice(None),) * axis + (int(index),)
