"""The cropped-first, in-place preprocessing gives the values of scaling the whole volume first."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_med3dvlm.io import preprocess_volume
from napari_med3dvlm.io.orientation import plane_view
from napari_med3dvlm.io.preprocess import foreground_box, intensity_range


def _whole_volume_first(data, modality, window, size):
    """The straightforward order: float32 copy, NaN/inf replaced, window, min-max, crop, resize."""
    _, low, high = intensity_range(data, modality, window)
    scaled = np.nan_to_num(data.astype(np.float32), nan=low, posinf=high, neginf=low)
    scaled = np.clip((scaled - low) / max(high - low, 1e-6), 0.0, 1.0)
    vmin, vmax = float(scaled.min()), float(scaled.max())
    scaled = (scaled - vmin) / (vmax - vmin + 1e-8)
    start, stop = foreground_box(scaled)
    crop = np.ascontiguousarray(scaled[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]])
    tensor = torch.from_numpy(crop)[None, None]
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=False), start, stop


def _volume(dtype, seed=0):
    rng = np.random.default_rng(seed)
    data = np.full((20, 24, 28), -1000, np.int64)
    data[3:17, 5:20, 4:22] = rng.integers(-300, 400, (14, 15, 18))
    if np.issubdtype(dtype, np.unsignedinteger):
        data = data + 1024
    return data.astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_tensor_and_box_as_scaling_the_whole_volume(dtype, modality):
    data = _volume(dtype)
    if np.issubdtype(dtype, np.floating):
        data[0, 0, 0], data[1, 2, 3], data[4, 5, 6] = np.nan, np.inf, -np.inf
    expected, start, stop = _whole_volume_first(data, modality, None, (8, 16, 16))
    got, transform = preprocess_volume(data, modality, spatial_size=(8, 16, 16))
    assert torch.equal(got, expected)
    assert (transform.crop_start, transform.crop_stop) == (start, stop)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_reversed_views_are_cropped_in_their_own_index_order(plane):
    data = _volume(np.int16, seed=1)
    stack = plane_view(data, plane)  # negative strides
    expected, start, stop = _whole_volume_first(np.ascontiguousarray(stack), "CT", "lung", (8, 8, 8))
    got, transform = preprocess_volume(data, "CT", "lung", (8, 8, 8), plane=plane)
    assert torch.equal(got, expected)
    assert (transform.crop_start, transform.crop_stop) == (start, stop)


def test_a_uniform_volume_is_not_cropped():
    got, transform = preprocess_volume(np.full((6, 7, 8), 50, np.int16), "CT", spatial_size=(6, 7, 8))
    assert (transform.crop_start, transform.crop_stop) == ((0, 0, 0), (6, 7, 8))
    assert torch.equal(got, torch.zeros(1, 1, 6, 7, 8))


def test_the_input_is_left_unchanged():
    data = _volume(np.float32)
    before = data.copy()
    preprocess_volume(data, "CT", spatial_size=(8, 8, 8))
    assert np.array_equal(data, before)
