"""Phantom files open in the plugin's readers as the same volume, plane and model input."""

import nibabel as nib
import numpy as np
import pytest

from napari_med3dvlm.io import layer_plane, read_volume
from napari_med3dvlm.io.orientation import (
    PLANE_LAYOUT,
    acquisition_view,
    affine_from_scale_translate,
    plane_view,
    stack_spacing,
)
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
    np.testing.assert_array_equal(stack, image.stack)
    np.testing.assert_allclose(spacing, image.stack_spacing, rtol=1e-4)
    display = image.volume
    np.testing.assert_array_equal(volume.data, display.data)
    np.testing.assert_allclose(volume.origin, display.origin, atol=1e-3)


def test_sample_data_is_an_hu_layer_without_identifiers():
    data, kwargs, kind = phantom_ct_sample()[0]
    assert kind == "image" and data.ndim == 3 and data.dtype == np.int16
    assert layer_plane(kwargs["metadata"]) == "axial"
    assert kwargs["contrast_limits"] == (-160.0, 240.0)  # soft-tissue window
    assert data.min() < -900 and data.max() > 300
    assert "Phantom" in kwargs["name"]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_phantom_image_holds_its_stack_and_a_display_volume_of_its_real_plane(plane):
    """The stack is the plane view (io.orientation's one plane table) of the display volume, and the
    stack's affine and the volume's affine put every voxel at the same place."""
    image = render_case(PhantomCase("t", 9, "chest", "arterial", plane), slices=12, pixels=20)
    volume = image.volume
    assert volume.plane == plane and volume.data.shape == volume.shape
    np.testing.assert_array_equal(plane_view(volume.data, plane), image.stack)
    np.testing.assert_array_equal(plane_view(image.display_finding_labels(), plane), image.finding_labels)
    assert stack_spacing(volume.spacing, plane) == image.stack_spacing
    np.testing.assert_allclose(volume.affine, affine_from_scale_translate(volume.spacing, volume.origin))
    # one stack voxel (slice, row, column) through each affine: the same point in RAS mm
    stack_index = (3, 5, 7)
    flat = plane_view(np.arange(volume.data.size).reshape(volume.shape), plane)[stack_index]
    zyx = np.unravel_index(flat, volume.shape)
    from_stack = image.stack_affine @ np.append(stack_index, 1.0)
    from_display = volume.affine @ np.append(zyx[::-1], 1.0)  # the Volume affine is indexed (x, y, z)
    np.testing.assert_allclose(from_stack, from_display, atol=1e-3)


def test_the_plane_table_flips_only_the_head_to_feet_axis():
    """The phantom canvas runs head to feet, front to back, right to left: display order with z
    reversed, so the generator can take its stack axes from io.orientation's table."""
    for plane, (perm, flipped) in PLANE_LAYOUT.items():
        assert sorted(perm) == [0, 1, 2], plane
        assert list(flipped) == [axis == 0 for axis in perm], plane
