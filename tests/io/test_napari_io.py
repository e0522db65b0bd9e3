"""The npe2 reader and writer, exercised through a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest
from io_assets import COLIN27, CRANIUM_SHAPE, CRANIUM_SPACING
from napari.layers import Layer
from pydicom.data import get_testdata_file

from napari_med3dvlm.io import Volume, preprocess_volume, read_volume
from napari_med3dvlm.io._napari import get_reader, model_input_overlay, volume_from_layer_data, volume_layer_data

PLUGIN = "napari-med3dvlm"


def test_dicom_folder_opens_as_one_layer_in_mm(make_napari_viewer, cranium_dicom, cranium_hu, assert_no_identifiers):
    viewer = make_napari_viewer()
    layers = viewer.open(str(cranium_dicom), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "Head CT axial"
    assert layer.data.shape == CRANIUM_SHAPE
    np.testing.assert_allclose(layer.scale, CRANIUM_SPACING, rtol=1e-5)
    np.testing.assert_allclose(layer.translate, (-80.0, -130.0, -122.5), atol=1e-3)
    np.testing.assert_array_equal(np.asarray(layer.data), cranium_hu)  # HU, not display values
    assert tuple(layer.contrast_limits) == (0.0, 80.0)  # the file's window 40/80
    assert layer.colormap.name == "gray"
    assert layer.metadata["modality"] == "CT"
    assert_no_identifiers((layer.name, layer.metadata))


def test_folder_with_two_series_gives_two_named_layers(make_napari_viewer, two_series_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(str(two_series_dir), plugin=PLUGIN)
    assert sorted(layer.name for layer in layers) == ["Head CT axial", "T1 axial"]
    assert len({layer.metadata["source_hash"] for layer in layers}) == 2


def test_zip_and_single_file(make_napari_viewer, cranium_zip):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(cranium_zip), plugin=PLUGIN)
    assert layer.data.shape == CRANIUM_SHAPE
    (small,) = viewer.open(get_testdata_file("CT_small.dcm"), plugin=PLUGIN)
    assert small.data.shape == (1, 128, 128)
    assert small.data.min() == -896  # HU after RescaleIntercept -1024


def test_nifti_template_opens_in_world_mm(make_napari_viewer):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(COLIN27), plugin=PLUGIN)
    assert layer.data.shape == (181, 217, 181)
    assert layer.metadata["modality"] == "MR"
    low, high = layer.contrast_limits
    assert 0 <= low < high <= float(np.asarray(layer.data).max())
    # World (S, P, L) = (0, 0, 0) is the MNI origin: inside the layer's extent.
    extent = layer.extent.world
    assert np.all(extent[0] < 0) and np.all(extent[1] > 0)


def test_reader_declines_what_is_not_ours(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "photo.png")) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without images
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None


def test_writer_round_trip_keeps_values_and_affine(make_napari_viewer, cranium_dicom, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(cranium_dicom), plugin=PLUGIN)
    target = tmp_path / "head.nii.gz"
    layer.save(str(target), plugin=PLUGIN)
    original, again = read_volume(cranium_dicom), read_volume(target)
    np.testing.assert_array_equal(again.data, original.data)
    np.testing.assert_allclose(again.affine, original.affine, atol=1e-4)
    assert again.modality == "CT"
    (reopened,) = viewer.open(str(target), plugin=PLUGIN)
    np.testing.assert_allclose(reopened.scale, layer.scale, rtol=1e-5)
    np.testing.assert_allclose(reopened.translate, layer.translate, atol=1e-3)


def test_writer_builds_an_affine_from_scale_and_translate(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    layer = viewer.add_image(data, scale=(2.0, 0.5, 0.75), translate=(10.0, -5.0, 3.0), name="drawn")
    layer.save(str(tmp_path / "drawn.nii"), plugin=PLUGIN)
    volume = read_volume(tmp_path / "drawn.nii")
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.spacing, (2.0, 0.5, 0.75))
    np.testing.assert_allclose(volume.origin, (10.0, -5.0, 3.0))


def test_model_input_overlay_overlays_the_source(make_napari_viewer):
    data = np.full((20, 40, 30), -1000, dtype=np.int16)
    data[5:15, 10:30, 8:20] = 50  # the body: the foreground crop keeps only this box
    data[9:11, 18:22, 12:16] = 1000  # a bright lesion inside it
    volume = Volume(data=data, spacing=(2.5, 0.8, 0.8), origin=(-30.0, 12.0, -7.0), modality="CT")
    tensor, transform = preprocess_volume(data, "CT", spatial_size=(16, 32, 32))
    viewer = make_napari_viewer()
    source = viewer.add_layer(Layer.create(*volume_layer_data(volume)))
    array, scale, translate, _ = model_input_overlay(volume, encoded=(tensor, transform))
    overlay = viewer.add_image(array, scale=scale, translate=translate)
    assert overlay.data.shape == (16, 32, 32)
    # The lesion sits at the same world position in both layers.
    lesion_model = np.argwhere(overlay.data > 0.99).mean(axis=0)
    lesion_source = np.argwhere(data == 1000).mean(axis=0)
    world_model = overlay.data_to_world(lesion_model)
    world_source = source.data_to_world(lesion_source)
    offset = np.abs(np.asarray(world_model) - np.asarray(world_source))
    assert np.all(offset <= np.asarray(volume.spacing) / 2), (world_model, world_source)


def test_model_input_overlay_runs_the_shared_preprocessing_on_a_layer():
    data = np.zeros((8, 16, 16), np.int16)
    data[2:6, 4:12, 4:12] = 300
    layer = volume_layer_data(Volume(data=data, modality="CT"))
    overlay = model_input_overlay(volume_from_layer_data(layer[0], layer[1]))
    expected, _ = preprocess_volume(data, "CT")
    np.testing.assert_array_equal(overlay.data, expected[0, 0].numpy())
    assert overlay.transform.plane == "axial"


@pytest.mark.parametrize("bad", ["four_d.nii"])
def test_reader_raises_clearly_for_non_3d(tmp_path, bad):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / bad)
    reader = get_reader(str(tmp_path / bad))
    with pytest.raises(ValueError, match="3-D"):
        reader(str(tmp_path / bad))


def test_writer_follows_a_layer_moved_after_reading(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(COLIN27), plugin=PLUGIN)
    layer.translate = (5.0, 6.0, 7.0)
    layer.save(str(tmp_path / "moved.nii.gz"), plugin=PLUGIN)
    volume = read_volume(tmp_path / "moved.nii.gz")
    np.testing.assert_allclose(volume.origin, (5.0, 6.0, 7.0))
    np.testing.assert_allclose(volume.spacing, layer.scale)
