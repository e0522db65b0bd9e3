"""The model sees a layer as the slice stack of its acquisition plane (the layout it was trained on),
and "what the model sees" lands on the same millimetres as the layer it came from."""

import numpy as np
import pytest

from napari_med3dvlm.io import Volume, acquisition_view, model_input, model_input_overlay, preprocess_volume
from napari_med3dvlm.io.orientation import plane_view


def _body_with_marker(marker_index):
    data = np.full((30, 40, 50), -1000, dtype=np.int16)
    z, y, x = np.mgrid[:30, :40, :50]
    data[(2 <= z) & (z < 27) & ((y - 20) ** 2 / 15**2 + (x - 25) ** 2 / 20**2 < 1)] = 40
    mz, my, mx = marker_index
    data[mz - 1 : mz + 2, my - 1 : my + 2, mx - 1 : mx + 2] = 300
    return data


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_layer_preprocessing_equals_the_training_stack(plane):
    data = _body_with_marker((8, 12, 30))
    volume = Volume(data, spacing=(2.0, 0.8, 0.7), plane=plane)
    stack, _ = acquisition_view(volume)
    expected, _ = preprocess_volume(np.asarray(stack), "CT", "soft tissue", (16, 32, 32))
    got, transform = preprocess_volume(data, "CT", "soft tissue", (16, 32, 32), plane=plane)
    assert transform.plane == plane
    assert torch_equal(got, expected)
    from_volume, volume_transform = model_input(volume, (16, 32, 32), "soft tissue")
    assert torch_equal(from_volume, expected) and volume_transform == transform
    assert np.array_equal(plane_view(data, plane), stack)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_model_input_overlay_lands_on_the_same_millimetres(plane):
    marker = (8, 12, 30)
    data = _body_with_marker(marker)
    spacing, origin = (2.0, 0.8, 0.7), (-40.0, 10.0, 5.0)
    volume = Volume(data, spacing=spacing, origin=origin, plane=plane)
    array, scale, translate, _ = model_input_overlay(volume, window=(40, 400))
    world_marker = np.asarray(origin) + np.asarray(marker) * np.asarray(spacing)
    overlay_peak = np.unravel_index(np.argmax(array), array.shape)
    bright = np.argwhere(array >= array[overlay_peak] * 0.99).mean(axis=0)
    world_overlay = np.asarray(translate) + bright * np.asarray(scale)
    # within one source voxel on every axis
    assert np.all(np.abs(world_overlay - world_marker) <= np.asarray(spacing)), (world_overlay, world_marker)


def torch_equal(a, b):
    return a.shape == b.shape and bool((a == b).all())
