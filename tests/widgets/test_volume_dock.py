import numpy as np
import pytest

from napari_med3dvlm.widgets import ReportWidget, VolumeWidget
from napari_med3dvlm.widgets._common import volume_input


def test_window_preset_sets_contrast_and_the_model_window(viewer_with_sample):
    viewer, layer = viewer_with_sample
    dock = VolumeWidget(viewer)
    assert "CT" in dock.info.text() and "mm" in dock.info.text()
    dock.apply_window("lung")
    assert tuple(layer.contrast_limits) == pytest.approx((-1350.0, 150.0))
    assert volume_input(layer).window == "lung"
    dock.window.setCurrentIndex(dock.window.findData("bone"))
    assert tuple(layer.contrast_limits) == pytest.approx((-500.0, 1300.0))


def test_model_input_overlay_toggles_and_lines_up(viewer_with_sample, qtbot):
    viewer, layer = viewer_with_sample
    dock = VolumeWidget(viewer)
    report = ReportWidget(viewer)
    with qtbot.waitSignal(viewer.layers.events.inserted, timeout=30_000):
        dock.model_view.setChecked(True)
    overlay = viewer.layers[-1]
    assert overlay.data.shape == (32, 64, 64)  # the tiny model's input size
    assert 0.0 <= overlay.data.min() and overlay.data.max() <= 1.0
    # the overlay covers the source's foreground box in world coordinates
    lo_world = np.asarray(overlay.translate) - np.asarray(overlay.scale) / 2
    hi_world = lo_world + np.asarray(overlay.scale) * np.asarray(overlay.data.shape)
    src_lo = np.asarray(layer.translate) - np.asarray(layer.scale) / 2
    src_hi = src_lo + np.asarray(layer.scale) * np.asarray(layer.data.shape)
    assert np.all(lo_world >= src_lo - 1e-6) and np.all(hi_world <= src_hi + 1e-6)
    # overlays are not offered as inputs to the model
    assert overlay not in report.layer_picker.layers()
    dock.model_view.setChecked(False)
    assert overlay not in viewer.layers


def test_open_path_adds_a_layer_through_the_reader(make_napari_viewer, engine, ct_volume, tmp_path, qtbot):
    import nibabel as nib

    path = tmp_path / "scan.nii.gz"
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct_volume.transpose(2, 1, 0)), affine), str(path))
    viewer = make_napari_viewer()
    dock = VolumeWidget(viewer)
    dock.open_path(path)
    qtbot.waitUntil(lambda: not dock.reading, timeout=30_000)
    layer = dock.layer_picker.layer()
    assert layer is viewer.layers[-1] and layer.data.shape == ct_volume.shape
    assert tuple(layer.scale) == pytest.approx((2.5, 0.8, 0.8))
    assert not dock.series_row.isVisible()


def test_a_folder_with_two_series_offers_a_choice(make_napari_viewer, engine, ct_volume, tmp_path, qtbot):
    from napari_med3dvlm.io.dicom_write import write_dicom_series

    folder = tmp_path / "study"
    write_dicom_series(ct_volume, folder / "a", spacing=(2.5, 0.8, 0.8), description="Axial soft tissue")
    write_dicom_series(ct_volume[:, ::2, ::2], folder / "b", spacing=(2.5, 1.6, 1.6), description="Axial low res")
    viewer = make_napari_viewer()
    dock = VolumeWidget(viewer)
    dock.open_path(folder)
    qtbot.waitUntil(lambda: not dock.reading, timeout=30_000)
    assert dock.series.count() == 2
    assert len(viewer.layers) == 0 and not dock.series_row.isHidden()
    labels = [dock.series.itemText(i) for i in range(dock.series.count())]
    assert any("low res" in label for label in labels)
    index = next(i for i, label in enumerate(labels) if "low res" in label)
    dock.series.setCurrentIndex(index)
    dock.add_series_button.click()
    qtbot.waitUntil(lambda: not dock.reading, timeout=30_000)
    assert len(viewer.layers) == 1 and viewer.layers[0].data.shape == (24, 24, 24)
    assert tuple(viewer.layers[0].scale) == pytest.approx((2.5, 1.6, 1.6))


@pytest.mark.slow
def test_an_unreadable_path_is_a_message(make_napari_viewer, engine, tmp_path, qtbot):
    (tmp_path / "notes.txt").write_text("not an image")
    viewer = make_napari_viewer()
    dock = VolumeWidget(viewer)
    dock.open_path(tmp_path)
    qtbot.waitUntil(lambda: not dock.reading, timeout=30_000)
    assert "Could not open" in dock.status.text() and len(viewer.layers) == 0
