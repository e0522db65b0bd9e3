"""Small PNG previews stored in the index, so a results list shows images without opening volumes."""

from __future__ import annotations

import io as _io

import numpy as np
from PIL import Image

from napari_med3dvlm.io.preprocess import intensity_range

THUMBNAIL_SIZE = 96


def middle_slice_png(
    data: np.ndarray, modality: str = "CT", window=None, size: int = THUMBNAIL_SIZE, pixel_spacing=(1.0, 1.0)
) -> bytes:
    """The middle slice of a (slices, rows, columns) stack, display-windowed like the model input,
    as 8-bit greyscale PNG bytes; the longer side is ``size`` pixels, the aspect that of the
    (row, column) ``pixel_spacing`` in mm, so thick-slice coronal stacks are not squashed.
    """
    data = np.asarray(data)
    slice_ = np.asarray(data[data.shape[0] // 2], dtype=np.float32)
    _, low, high = intensity_range(data, modality, window)
    scaled = np.clip((np.nan_to_num(slice_, nan=low) - low) / max(high - low, 1e-6), 0.0, 1.0)
    image = Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L")
    row_mm, col_mm = (float(v) if v and v > 0 else 1.0 for v in pixel_spacing)
    width_mm, height_mm = image.size[0] * col_mm, image.size[1] * row_mm
    scale = size / max(width_mm, height_mm)
    new_size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = image.resize(new_size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_to_array(png: bytes) -> np.ndarray:
    """Decode thumbnail bytes to a (h, w) uint8 array."""
    return np.asarray(Image.open(_io.BytesIO(png)).convert("L"))
