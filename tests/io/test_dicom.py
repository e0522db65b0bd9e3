"""DICOM series: ordering, spacing, rescale, geometry, multi-frame and robustness."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_assets import CRANIUM_SHAPE, CRANIUM_SPACING
from pydicom.data import get_testdata_file

from napari_med3dvlm.io import VolumeReadError, list_series, read_volume, read_volumes
from napari_med3dvlm.io.dicom_write import write_dicom_series


def test_shuffled_series_is_ordered_by_position_and_rescaled_once(cranium_dicom, cranium_hu):
    volume = read_volume(cranium_dicom)
    assert volume.shape == CRANIUM_SHAPE
    np.testing.assert_allclose(volume.spacing, CRANIUM_SPACING, rtol=1e-5)
    assert volume.modality == "CT"
    assert volume.window == (40.0, 80.0)
    # Exact HU: order recovered from positions, slope/intercept applied exactly once.
    np.testing.assert_array_equal(volume.data, cranium_hu)
    assert volume.data.min() == -1024 and volume.data.max() > 2000
    assert volume.data.dtype == np.int16
    # Voxel (0, 0, 0) is the first position written, as (S, P, L).
    np.testing.assert_allclose(volume.origin, (-80.0, -130.0, -122.5), atol=1e-3)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    values = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)
    write_dicom_series(values, tmp_path, spacing=(2.5, 1, 1), extra={"SliceThickness": "5"})
    assert read_volume(tmp_path).spacing[0] == pytest.approx(2.5)


def test_float_slope_and_intercept(tmp_path):
    values = np.linspace(-1000, 1000, 3 * 8 * 8).reshape(3, 8, 8).round(1)
    write_dicom_series(values, tmp_path, slope=0.5, intercept=-1000.5)
    volume = read_volume(tmp_path)
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data, values, atol=0.5)


def _world_sapl(volume, index):
    """World (S, P, L) of a display voxel, from the napari scale/translate we would use."""
    return np.asarray(volume.origin) + np.asarray(index) * np.asarray(volume.spacing)


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # axial, as scanners store it
        (-1, 0, 0, 0, 1, 0),  # axial, columns running to the patient's right
        (1, 0, 0, 0, 0, -1),  # coronal
        (0, 1, 0, 0, 0, -1),  # sagittal
    ],
    ids=["axial", "axial-flipped", "coronal", "sagittal"],
)
def test_display_orientation_is_lps_for_any_plane_of_acquisition(tmp_path, orientation):
    stored = np.zeros((5, 6, 7), dtype=np.int16)
    marker = (3, 1, 5)  # (slice, row, column)
    stored[marker] = 1000
    spacing = (2.0, 1.5, 1.25)
    first = np.array([10.0, -20.0, 30.0])
    write_dicom_series(stored, tmp_path, spacing=spacing, first_position=first, orientation=orientation)
    volume = read_volume(tmp_path)

    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    k, r, c = marker
    marker_lps = first + k * spacing[0] * normal + r * spacing[1] * iop[3:] + c * spacing[2] * iop[:3]
    found = np.unravel_index(np.argmax(volume.data), volume.shape)
    np.testing.assert_allclose(_world_sapl(volume, found), marker_lps[::-1], atol=1e-3)
    # Axes run toward Superior, Posterior, Left: the affine (x, y, z -> RAS) has signs -, -, +.
    assert volume.affine[0, 0] < 0 and volume.affine[1, 1] < 0 and volume.affine[2, 2] > 0


def test_zip_archive(cranium_zip, cranium_hu):
    volume = read_volume(cranium_zip)
    np.testing.assert_array_equal(volume.data, cranium_hu)


def test_folder_with_two_series_needs_a_choice(two_series_dir, cranium_hu):
    infos = list_series(two_series_dir)
    assert sorted(i.description for i in infos) == ["Head CT axial", "T1 axial"]
    by_name = {i.description: i for i in infos}
    assert by_name["Head CT axial"].shape == CRANIUM_SHAPE
    assert by_name["T1 axial"].modality == "MR"
    assert by_name["T1 axial"].n_slices == 27

    with pytest.raises(VolumeReadError, match="2 series.*Head CT axial"):
        read_volume(two_series_dir)
    ct = read_volume(two_series_dir, series="Head CT axial")
    np.testing.assert_array_equal(ct.data, cranium_hu)
    mr = read_volume(two_series_dir, series=by_name["T1 axial"].uid_hash)
    assert mr.modality == "MR" and mr.shape == (27, 64, 64)
    assert len(read_volumes(two_series_dir)) == 2


def test_no_identifiers_leave_the_reader(cranium_dicom, assert_no_identifiers):
    uid = pydicom.dcmread(next(cranium_dicom.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    volume = read_volume(cranium_dicom)
    infos = list_series(cranium_dicom)
    assert_no_identifiers((volume.description, volume.metadata, infos), uids=[uid])


@pytest.mark.parametrize(
    ("name", "shape", "modality", "hu_range"),
    [
        ("CT_small.dcm", (1, 128, 128), "CT", (-896, 1167)),
        ("MR_small.dcm", (1, 64, 64), "MR", None),
        ("693_UNCI.dcm", (1, 512, 512), "CT", None),
    ],
)
def test_pydicom_single_slices(name, shape, modality, hu_range):
    path = get_testdata_file(name)
    volume = read_volume(path)
    ds = pydicom.dcmread(path)
    assert volume.shape == shape and volume.modality == modality
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(volume.data[0], expected)
    if hu_range:
        assert (volume.data.min(), volume.data.max()) == hu_range


def test_enhanced_ct_uses_functional_groups():
    path = get_testdata_file("eCT_Supplemental.dcm")
    volume = read_volume(path)
    ds = pydicom.dcmread(path)
    assert volume.shape == (2, 512, 512)
    np.testing.assert_allclose(volume.spacing, (10.0, 0.388672, 0.388672))  # from the positions
    assert volume.window == (49.0, 102.0)
    # Per-frame rescale (intercept -1024) applied; columns flipped because IOP runs to the right.
    np.testing.assert_array_equal(volume.data[0], ds.pixel_array[0][:, ::-1].astype(np.int32) - 1024)


def test_multiframe_mr_without_geometry_warns_and_loads():
    with pytest.warns(UserWarning, match="no slice positions"):
        volume = read_volume(get_testdata_file("emri_small.dcm"))
    assert volume.shape == (10, 64, 64) and volume.modality == "MR"
    assert volume.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices


def test_non_image_objects_are_skipped_with_a_warning():
    folder = os.path.join(os.path.dirname(get_testdata_file("CT_small.dcm")), "dicomdirtests")
    with pytest.warns(UserWarning, match="skipped DICOM objects"):
        infos = list_series(folder)
    assert "Routine Brain" in [i.description for i in infos]
    assert all(i.n_slices >= 1 for i in infos)


def test_corrupt_file_gives_a_clear_error(tmp_path, cranium_dicom):
    source = sorted(cranium_dicom.iterdir())[0].read_bytes()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(source[: len(source) // 2])
    with pytest.raises(VolumeReadError, match="broken.dcm"):
        read_volume(broken)


def test_empty_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(VolumeReadError, match="no NIfTI or DICOM"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_volumes(tmp_path)


def test_damaged_file_in_a_folder_is_skipped_with_a_warning(tmp_path, cranium_dicom, cranium_hu):
    files = sorted(cranium_dicom.iterdir())
    for file in files:
        (tmp_path / file.name).write_bytes(file.read_bytes())
    (tmp_path / "zz_damaged.dcm").write_bytes(files[0].read_bytes()[:300])  # cut inside the header
    with pytest.warns(UserWarning, match="1 unreadable files: zz_damaged.dcm"):
        volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.data, cranium_hu)


def test_selected_files_are_grouped_like_a_folder(cranium_dicom, cranium_hu):
    files = [str(p) for p in sorted(cranium_dicom.iterdir())]
    volumes = read_volumes(files)
    assert len(volumes) == 1
    np.testing.assert_array_equal(volumes[0].data, cranium_hu)


def test_jpeg_ls_compressed_series_decodes_to_the_same_values():
    plain = read_volume(get_testdata_file("MR_small.dcm"))
    compressed = read_volume(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    np.testing.assert_array_equal(compressed.data, plain.data)


def test_tilted_gantry_positions_are_reported(tmp_path):
    values = np.zeros((4, 8, 8), np.int16)
    paths = write_dicom_series(values, tmp_path, spacing=(2.0, 1.0, 1.0))
    for k, path in enumerate(paths):  # shift each slice sideways along y, as a tilted gantry does
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.8 * (ds.InstanceNumber - 1), z]
        ds.save_as(path)
    with pytest.warns(UserWarning, match="gantry tilt"):
        volume = read_volume(tmp_path)
    assert volume.spacing[0] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("orientation", "plane", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), "axial", lambda s: s[::-1]),  # stored feet-to-head; view runs head-to-feet
        ((1, 0, 0, 0, 0, -1), "coronal", lambda s: s),  # head-up, patient left on the right
        ((0, 1, 0, 0, 0, -1), "sagittal", lambda s: s[::-1]),  # stored left-to-right; view runs right-to-left
    ],
)
def test_acquisition_view_gives_back_the_slices_of_the_series_plane(tmp_path, orientation, plane, expected):
    """The model is trained on slice stacks in the series' own plane (M3D): the display
    reorientation must be undoable."""
    from napari_med3dvlm.io import acquisition_view

    stored = np.random.default_rng(1).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    write_dicom_series(stored, tmp_path, spacing=(2.0, 1.5, 1.25), orientation=orientation)
    volume = read_volume(tmp_path)
    assert volume.plane == plane
    view, spacing = acquisition_view(volume)
    np.testing.assert_array_equal(view, expected(stored))
    assert spacing == (2.0, 1.5, 1.25)


def test_siemens_mosaic_is_flagged_and_decimal_rescale_applied():
    import nibabel as nib

    data = Path(nib.__file__).parent / "nicom" / "tests" / "data"
    with pytest.warns(UserWarning, match="Siemens mosaic"):
        read_volume(data / "0.dcm")
    ds = pydicom.dcmread(data / "decimal_rescale.dcm")
    volume = read_volume(data / "decimal_rescale.dcm")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.data[0], expected)


@pytest.mark.slow
def test_series_is_held_in_memory_once(cranium_dicom):
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        volume = read_volume(cranium_dicom)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * volume.data.nbytes, f"peak {peak / volume.data.nbytes:.2f}x the volume"


def test_messages_do_not_repeat_folder_names(tmp_path, two_series_dir):
    """Exports are often filed under the patient's name; warnings and errors never show it."""
    import shutil

    folder = tmp_path / "DOE_JANE_1961"
    shutil.copytree(two_series_dir, folder)
    first = sorted((folder / "exam" / "ct").iterdir())[0]
    (folder / "exam" / "ct" / "broken.dcm").write_bytes(first.read_bytes()[:300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(VolumeReadError) as error:
            read_volume(folder)
    messages = [str(w.message) for w in caught] + [str(error.value)]
    assert any("broken.dcm" in m for m in messages)
    assert not any("DOE" in m or "exam" in m for m in messages), messages
