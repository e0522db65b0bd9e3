"""Small shared pieces: the readers' error type, the limits that protect the machine (special files,
memory), identifier hashing and cheap sampling of large arrays."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np

#: Share of the currently available memory one read may allocate (decoded volume, zip members).
MEMORY_SHARE = 0.8


class VolumeReadError(ValueError):
    """A file or folder that looks like ours but cannot be read as a volume.

    The message names the file (its base name; never a folder, which may name the patient), says
    what is wrong and, where it helps, what to do.
    """


def is_regular_file(path) -> bool:
    """Whether ``path`` is a regular file (links followed), decided by ``stat`` alone.

    Named pipes, devices and sockets are never opened: opening a pipe blocks until something writes
    to it, and reading a device may never end.
    """
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def not_a_regular_file(name: str) -> VolumeReadError:
    return VolumeReadError(f"{name}: not a regular file (a named pipe, device or socket); it was not opened")


def available_memory() -> int:
    """Bytes of memory available to this process now (free plus reclaimable cache)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform: the POSIX count, else no limit
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62


def format_bytes(count: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def check_memory(nbytes: int, name: str, what: str) -> None:
    """Refuse, before allocating, a read that needs more than `MEMORY_SHARE` of the free memory."""
    available = available_memory()
    if nbytes > MEMORY_SHARE * available:
        raise VolumeReadError(
            f"{name}: {what} needs {format_bytes(nbytes)} of memory, but only {format_bytes(available)} is "
            "available; free memory or open it on a larger machine (a header claiming this size may also be damaged)"
        )


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
