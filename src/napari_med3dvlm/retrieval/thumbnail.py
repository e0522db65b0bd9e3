"""Small PNG previews stored in the index, so a results list shows images without opening volumes."""

from __future__ import annotations

import io as _io

import numpy as np
from PIL import Image

from napari_med3dvlm.io.preprocess import intensity_range

THUMBNAIL_SIZE = 96


def middle_slice_png(data: np.ndarray, modality: str = "CT", window=None, size: int = THUMBNAIL_SIZE) -> bytes:
    """The middle axial slice, display-windowed like the model input, as 8-bit greyscale PNG bytes.

    The longer side is scaled to ``size`` pixels; in-plane aspect is kept in voxels (not mm), which
    is what a thumbnail needs to be recognisable.
    """
    data = np.asarray(data)
    slice_ = np.asarray(data[data.shape[0] // 2], dtype=np.float32)
    _, low, high = intensity_range(data, modality, window)
    scaled = np.clip((np.nan_to_num(slice_, nan=low) - low) / max(high - low, 1e-6), 0.0, 1.0)
    image = Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L")
    scale = size / max(image.size)
    new_size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    image = image.resize(new_size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_to_array(png: bytes) -> np.ndarray:
    """Decode thumbnail bytes to a (h, w) uint8 array."""
    return np.asarray(Image.open(_io.BytesIO(png)).convert("L"))
