"""Where a model runs and in which precision: the one policy for the VLM, the SigLIP encoder and
retrieval (the loaders, the inference engine and the retrieval embedder all ask here).

``auto`` picks CUDA, then Apple MPS, then the CPU. bf16 on CUDA halves memory (the published 7B
model needs ~15 GB instead of ~31 GB; fp16 where the GPU has no bf16), fp16 on MPS; on CPU fp32 is
the safe default. On CPU one core is left free so the napari event loop stays responsive while the
model generates.
"""

from __future__ import annotations

import os
import sys

import torch

_DTYPES = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(preference: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) prefers CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    if isinstance(preference, torch.device):
        return preference
    if preference in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; set Device to 'auto' or 'cpu'")
    if preference == "mps" and not mps_available():
        raise RuntimeError("device 'mps' was requested but Apple MPS is not available; set Device to 'auto' or 'cpu'")
    return torch.device(preference)


def dtype_for(device: torch.device | str, requested: str | torch.dtype | None = "auto") -> torch.dtype:
    """The dtype to run on ``device``: ``requested`` when given (a torch dtype or its name), else the
    policy above."""
    if isinstance(requested, torch.dtype):
        return requested
    if requested not in (None, "auto"):
        if requested in _DTYPES:
            return _DTYPES[requested]
        value = getattr(torch, str(requested), None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {requested!r}; expected one of {sorted(_DTYPES)}")
        return value
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gui_running() -> bool:
    """Whether a Qt application (napari) lives in this process."""
    for name in ("PyQt6.QtCore", "PyQt5.QtCore", "PySide6.QtCore", "PySide2.QtCore"):
        module = sys.modules.get(name)
        if module is not None and module.QCoreApplication.instance() is not None:
            return True
    return False


def configure_cpu_threads(device: torch.device, reserve: int | None = None) -> int:
    """On CPU, give torch every core but ``reserve`` (default: one while a GUI is running, so the
    viewer stays responsive; none on the command line). Returns the previous thread count."""
    previous = torch.get_num_threads()
    if device.type != "cpu":
        return previous
    if reserve is None:
        reserve = 1 if gui_running() else 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    threads = max(1, cores - reserve)
    if previous != threads:
        torch.set_num_threads(threads)
    return previous


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else MemoryError):
        return True
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
