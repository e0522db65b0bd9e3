"""Pixels: each frame decoded once, rescaled to modality units once, and stacked."""

from __future__ import annotations

import numpy as np
import pydicom

from .._util import VolumeReadError
from .records import _Slice
from .sources import _why


def _rescale(raw: np.ndarray, item: _Slice) -> np.ndarray:
    """Stored values -> modality units (HU for CT), for one frame."""
    if item.header.get("ModalityLUTSequence"):
        try:
            return pydicom.pixels.apply_modality_lut(raw, item.header)
        except Exception as err:  # a damaged lookup table
            raise VolumeReadError(f"{item.name}: its modality lookup table cannot be applied ({_why(err)})") from err
    if item.slope == 1.0 and float(item.intercept).is_integer():
        if item.intercept == 0:
            return raw
        return raw.astype(np.int32) + int(item.intercept)
    return raw.astype(np.float32) * np.float32(item.slope) + np.float32(item.intercept)


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    if values.dtype.kind == "f":
        return False
    info = np.iinfo(dtype)
    return values.size == 0 or (info.min <= values.min() and values.max() <= info.max)


def _dims(shape) -> str:
    return " x ".join(str(int(n)) for n in shape)


def _pixels(slices: list[_Slice], shape: tuple[int, int]) -> tuple[np.ndarray, list[_Slice], dict[str, str]]:
    """Stack the frames in the given order, applying each frame's rescale once.

    The output starts as int16 (what CT in HU needs) and is widened only if a frame does not fit,
    so a series costs one volume-sized allocation in the common case. A frame whose pixel data
    cannot be decoded, or does not match the series' size, is left out: returns the stack, the
    slices it holds, and {file name: what was wrong} for those left out.
    """
    out = None
    kept: list[_Slice] = []
    failed: dict[str, str] = {}
    frames_of, frames, frames_error = None, None, None
    for item in slices:
        try:
            if item.frame is None:
                raw = _take_pixels(item)
            else:
                if frames_of is not item.header:
                    frames_of, frames, frames_error = item.header, None, None
                    try:
                        frames = _take_pixels(item)
                        frames = frames[None] if frames.ndim == 2 else frames
                    except VolumeReadError as err:
                        frames_error = err
                if frames_error is not None:
                    raise frames_error
                if item.frame >= len(frames):
                    raise VolumeReadError(
                        f"{item.name}: frame {item.frame + 1} is missing from its decoded pixel data "
                        f"({len(frames)} frames)"
                    )
                raw = frames[item.frame]
            if raw.shape != shape:
                raise VolumeReadError(
                    f"{item.name}: its pixel data decodes to {_dims(raw.shape)} values, but its slices are "
                    f"{_dims(shape)} pixels (Rows, Columns, NumberOfFrames or SamplesPerPixel do not match "
                    "the pixel data)"
                )
            values = _rescale(raw, item)
        except VolumeReadError as err:
            failed.setdefault(item.name, str(err))
            continue
        if out is None:
            dtype = np.dtype(np.int16) if values.dtype.kind in "iu" else np.dtype(np.float32)
            if not _fits(values, dtype):
                dtype = np.result_type(values.dtype, np.int16)
            out = np.empty((len(slices), *shape), dtype=dtype)
        elif not _fits(values, out.dtype):
            wider = np.float32 if values.dtype.kind == "f" else np.result_type(values.dtype, out.dtype)
            out = out.astype(wider)
        out[len(kept)] = values
        kept.append(item)
    if out is None:
        return np.empty((0, *shape), np.int16), kept, failed
    return out[: len(kept)], kept, failed


def _take_pixels(item: _Slice) -> np.ndarray:
    """Decode a file's pixels and drop them (bytes and pydicom's cached array) from its header,
    so a loaded series is held in memory once: in the output volume."""
    array = _decode(item.name, item.header)
    if "PixelData" in item.header:
        del item.header.PixelData
    return array


def _decode(name: str, ds) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as err:  # pydicom and its decoders raise many types for damaged data
        raise VolumeReadError(f"{name}: pixel data could not be decoded ({_why(err)})") from err
