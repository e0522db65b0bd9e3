"""NIfTI: display orientation from any stored orientation, header facts, memory, round trip."""

from __future__ import annotations

import gc
import gzip
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from io_assets import COLIN27
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from napari_med3dvlm.io import VolumeReadError, read_volume
from napari_med3dvlm.io.nifti import write_nifti_volume
from napari_med3dvlm.io.orientation import affine_from_scale_translate

MNI = Path(nib.__file__).parents[1] / "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _landmark_volume():
    """(z, y, x) display-ordered HU volume with one bright voxel at the patient's
    superior-anterior-left corner region: high z, low y, high x."""
    data = np.full((6, 7, 8), -1000, dtype=np.int16)
    data[1:5, 1:6, 1:7] = 40
    data[4, 1, 6] = 1500
    return data


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAS", "RPI", "ASL", "PIR"])
def test_any_stored_orientation_reads_as_lps_display(tmp_path, axcodes):
    display = _landmark_volume()
    spacing, origin = (3.0, 2.0, 1.5), (-40.0, 25.0, -10.0)
    display_affine = affine_from_scale_translate(spacing, origin)
    to_stored = ornt_transform(axcodes2ornt(("L", "P", "S")), axcodes2ornt(tuple(axcodes)))
    stored = apply_orientation(display.transpose(2, 1, 0), to_stored)
    stored_affine = display_affine @ inv_ornt_aff(to_stored, display.transpose(2, 1, 0).shape)
    assert "".join(nib.aff2axcodes(stored_affine)) == axcodes
    path = tmp_path / f"{axcodes}.nii.gz"
    nib.save(nib.Nifti1Image(stored, stored_affine), path)

    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, display)
    np.testing.assert_allclose(volume.affine, display_affine, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, spacing)
    np.testing.assert_allclose(volume.origin, origin, atol=1e-6)
    assert volume.modality == "CT"  # air and bone in HU


def test_ras_file_shows_anterior_up_and_patient_left_on_the_right(tmp_path):
    """Written by hand in RAS storage, independent of our own orientation code."""
    stored = np.zeros((8, 7, 6), dtype=np.int16)  # (i -> Right, j -> Anterior, k -> Superior)
    stored[0, 6, 5] = 100  # patient left (low i), anterior (high j), superior (high k)
    nib.save(nib.Nifti1Image(stored, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "ras.nii")
    volume = read_volume(tmp_path / "ras.nii")
    z, y, x = np.unravel_index(np.argmax(volume.data), volume.shape)
    assert volume.shape == (6, 7, 8)
    assert (z, y, x) == (5, 0, 7)  # top slice, top row (anterior), right column (patient left)
    assert volume.spacing == (3.0, 2.0, 2.0)


def test_colin27_template():
    volume = read_volume(COLIN27)
    assert volume.shape == (181, 217, 181)
    assert volume.spacing == (1.0, 1.0, 1.0)
    assert volume.modality == "MR"
    # MNI space: the anterior commissure (0, 0, 0) is inside the volume, in bright tissue.
    index = np.round(-np.asarray(volume.origin) / np.asarray(volume.spacing)).astype(int)
    assert all(0 < i < s for i, s in zip(index, volume.shape))
    # Brain extends further behind the AC (~105 mm) than in front of it (~70 mm): in display
    # order posterior is down (larger y), so the AC sits above the middle row.
    assert index[1] < volume.shape[1] / 2


def test_mni_template_from_nilearn():
    volume = read_volume(MNI)
    assert volume.shape == (189, 233, 197)
    np.testing.assert_allclose(volume.spacing, (1.0, 1.0, 1.0))
    assert volume.modality == "MR"


def test_four_d_file_is_refused_clearly(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "fmri.nii")
    with pytest.raises(VolumeReadError, match="3-D"):
        read_volume(tmp_path / "fmri.nii")


def test_corrupt_file_is_refused_clearly(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(VolumeReadError, match="bad.nii.gz"):
        read_volume(tmp_path / "bad.nii.gz")


def test_nans_are_counted_and_reported(tmp_path):
    data = np.ones((5, 5, 5), np.float32)
    data[2, 2, :3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.warns(UserWarning, match="3 voxels are NaN"):
        volume = read_volume(tmp_path / "nan.nii")
    assert volume.metadata["nan_voxels"] == 3


def test_write_then_read_round_trip(tmp_path):
    original = read_volume(COLIN27)
    path = write_nifti_volume(original, tmp_path / "copy.nii.gz")
    again = read_volume(path)
    np.testing.assert_array_equal(again.data, original.data)
    np.testing.assert_allclose(again.affine, original.affine)
    assert again.modality == original.modality


def _sparse_nifti(path: Path, shape_zyx, dtype=np.int16) -> int:
    """An uncompressed NIfTI of the given size without writing its zeros (sparse file)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape_zyx[::-1])
    header.set_data_dtype(dtype)
    header.set_zooms((0.7, 0.7, 1.0))
    header.set_sform(np.diag([0.7, 0.7, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    nbytes = int(np.prod(shape_zyx)) * np.dtype(dtype).itemsize
    with open(path, "wb") as handle:
        handle.write(header.binaryblock)
        handle.write(b"\x00" * 4)  # no extensions
        handle.truncate(352 + nbytes)
    return nbytes


def _peak_bytes(function):
    gc.collect()
    tracemalloc.start()
    try:
        result = function()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_large_uncompressed_volume_is_not_copied(tmp_path):
    """1024 x 512 x 512 int16 (512 MiB): opened memory-mapped, layer tuple included."""
    from napari_med3dvlm.io._napari import read_layers

    path = tmp_path / "large.nii"
    nbytes = _sparse_nifti(path, (1024, 512, 512))
    layers, peak = _peak_bytes(lambda: read_layers(str(path)))
    data = layers[0][0]
    assert data.shape == (1024, 512, 512) and data.dtype == np.int16
    assert peak < 0.1 * nbytes, f"peak {peak / 2**20:.0f} MiB for a {nbytes / 2**20:.0f} MiB volume"


def test_compressed_volume_is_decompressed_once(tmp_path):
    """A .nii.gz is decompressed straight into the array: peak memory is the volume plus a
    few MiB of buffers, not two volumes."""
    raw = tmp_path / "medium.nii"
    nbytes = _sparse_nifti(raw, (256, 512, 512))
    with open(raw, "rb") as source, gzip.open(tmp_path / "medium.nii.gz", "wb", compresslevel=1) as target:
        shutil.copyfileobj(source, target, length=1 << 23)
    raw.unlink()
    volume, peak = _peak_bytes(lambda: read_volume(tmp_path / "medium.nii.gz"))
    assert volume.shape == (256, 512, 512) and volume.data.nbytes == nbytes
    assert peak < 1.1 * nbytes, f"peak {peak / nbytes:.2f}x the volume size"


NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def test_spm_normalised_mr_with_negative_undershoot_is_mr():
    volume = read_volume(NIBABEL_DATA / "anatomical.nii")  # SPM output: values from -610 upward
    assert volume.modality == "MR"
    assert volume.shape == (25, 41, 33)


def test_list_series_reads_headers_only_and_agrees_with_the_reader():
    from napari_med3dvlm.io import list_series

    for path in (COLIN27, NIBABEL_DATA / "anatomical.nii"):
        (info,) = list_series(path)
        volume = read_volume(path)
        assert (info.shape, info.modality, info.description) == (volume.shape, volume.modality, volume.description)
    with pytest.raises(VolumeReadError, match="3-D"):
        list_series(NIBABEL_DATA / "example4d.nii.gz")


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PLS", "ASL", "PIR"])
def test_a_volume_written_in_its_stored_orientation_matches_its_source_file(tmp_path, axcodes):
    display = _landmark_volume()
    display_affine = affine_from_scale_translate((3.0, 2.0, 1.5), (-40.0, 25.0, -10.0))
    to_stored = ornt_transform(axcodes2ornt(("L", "P", "S")), axcodes2ornt(tuple(axcodes)))
    stored = apply_orientation(display.transpose(2, 1, 0), to_stored)
    stored_affine = display_affine @ inv_ornt_aff(to_stored, display.transpose(2, 1, 0).shape)
    nib.save(nib.Nifti1Image(stored, stored_affine), tmp_path / "source.nii.gz")
    volume = read_volume(tmp_path / "source.nii.gz")
    assert volume.metadata["stored_orientation"] == axcodes

    copy = nib.load(write_nifti_volume(volume, tmp_path / "copy.nii.gz", volume.metadata["stored_orientation"]))
    np.testing.assert_array_equal(np.asarray(copy.dataobj), stored)
    np.testing.assert_allclose(copy.affine, stored_affine, atol=1e-5)
    display_copy = read_volume(write_nifti_volume(volume, tmp_path / "display.nii.gz"))  # default: display order
    np.testing.assert_array_equal(display_copy.data, display)
