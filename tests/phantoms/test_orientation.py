"""Phantom files open in the plugin's readers as the same volume, plane and model input."""

import nibabel as nib
import numpy as np
import pytest

from napari_med3dvlm.io import layer_plane, read_volume
from napari_med3dvlm.io.orientation import acquisition_view
from napari_med3dvlm.phantoms import render_case
from napari_med3dvlm.phantoms._napari import phantom_ct_sample
from napari_med3dvlm.phantoms.case import PhantomCase


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_raw_nifti_reads_back_as_the_training_stack(tmp_path, plane):
    image = render_case(PhantomCase("t", 9, "chest", "arterial", plane), slices=16, pixels=40)
    data, affine = image.nifti_array_and_affine()
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = read_volume(path)
    assert volume.plane == plane
    stack, spacing = acquisition_view(volume)
    np.testing.assert_array_equal(stack, image.volume.data)
    np.testing.assert_allclose(spacing, image.volume.spacing, rtol=1e-4)
    display = image.display_volume()
    np.testing.assert_array_equal(volume.data, display.data)
    np.testing.assert_allclose(volume.origin, display.origin, atol=1e-3)


def test_sample_data_is_an_hu_layer_without_identifiers():
    data, kwargs, kind = phantom_ct_sample()[0]
    assert kind == "image" and data.ndim == 3 and data.dtype == np.int16
    assert layer_plane(kwargs["metadata"]) == "axial"
    assert kwargs["contrast_limits"] == (-160.0, 240.0)  # soft-tissue window
    assert data.min() < -900 and data.max() > 300
    assert "Phantom" in kwargs["name"]
