"""The "outside what this model knows" warning in the Report and Chat docks (under Xvfb): shown above
the answer, the answer still generated, gone when the setting is off."""

import shutil

import numpy as np
import pytest

from napari_med3dvlm.model.scope import ScopeProfile
from napari_med3dvlm.widgets import ChatWidget, ReportWidget
from napari_med3dvlm.widgets.settings import SettingsWidget


@pytest.fixture
def ct_only_engine(engine, tiny_model_dir, tmp_path):
    """The tiny model in a folder whose scope.json says it knows CT only."""
    folder = tmp_path / "ct_only_model"
    shutil.copytree(tiny_model_dir, folder)
    ScopeProfile(modalities=("CT",), advice="Load a model trained on MR.").save(folder)
    engine.update_settings(engine.settings.updated(model_source=str(folder)))
    return engine


def add_mr(viewer):
    z, y, x = np.mgrid[:24, :40, :40]
    data = (300 + 200 * np.exp(-((y - 20) ** 2 + (x - 20) ** 2) / 80.0)).astype(np.int16)
    return viewer.add_image(data, name="T1", metadata={"modality": "MR"})


@pytest.mark.slow
def test_report_dock_warns_above_the_report_and_still_writes_it(make_napari_viewer, ct_only_engine, qtbot):
    viewer = make_napari_viewer(show=True)
    dock = ReportWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Report")
    add_mr(viewer)
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        dock.generate_button.click()
    banner = dock.scope_banner
    assert banner.isVisible()
    assert "Outside what this model knows: MR scan, the model knows CT" in banner.text()
    assert "it is MR, the model knows CT only" in banner.toolTip()  # the full reason
    assert "Load a model trained on MR." in banner.text()
    assert banner.geometry().bottom() <= dock.text.geometry().top()  # above the answer
    assert dock.record.text and dock.text.toPlainText() == dock.record.text  # generation ran
    assert dock.record.scope["codes"] == ["modality"]

    sample = viewer.open_sample("napari-med3dvlm", "phantom_ct")[0]  # a CT: in scope
    dock.layer_picker.set_layer(sample)
    assert not banner.isVisible()  # no report yet for this layer
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        dock.generate_button.click()
    assert not banner.isVisible() and dock.record.scope["in_scope"]


def test_chat_dock_warns_and_the_setting_turns_it_off(make_napari_viewer, ct_only_engine, config_dir, qtbot):
    viewer = make_napari_viewer(show=True)
    dock = ChatWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Chat")
    layer = add_mr(viewer)
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        assert dock.send("What is shown?")
    assert dock.scope_banner.isVisible() and "MR scan" in dock.scope_banner.text()
    assert dock.conversation(layer).turns[0].answer  # answered anyway
    assert dock.scope_banner.geometry().bottom() <= dock.view.geometry().top()

    settings = SettingsWidget(viewer, config_dir=config_dir)
    assert settings.scope_warnings.isChecked()
    settings.scope_warnings.setChecked(False)
    assert settings.apply()
    assert ct_only_engine.settings.scope_warnings is False
    from napari_med3dvlm.inference import load_settings

    assert load_settings(config_dir).scope_warnings is False  # persisted
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        assert dock.send("And now?")
    assert not dock.scope_banner.isVisible()


def test_retrieval_results_mark_volumes_outside_the_model(make_napari_viewer, tmp_path):
    from qtpy.QtCore import Qt

    from napari_med3dvlm.retrieval.store import SearchHit
    from napari_med3dvlm.retrieval.thumbnail import middle_slice_png
    from napari_med3dvlm.widgets.retrieval import SCOPE_ROLE, RetrievalWidget

    viewer = make_napari_viewer()
    widget = RetrievalWidget(viewer)
    png = middle_slice_png(np.zeros((4, 8, 8), np.int16), "CT", None)
    common = dict(description="", modality="MR", shape=(4, 8, 8), spacing=(1, 1, 1), thumbnail=png)
    hits = [
        SearchHit(0.9, "0/a", tmp_path / "a.nii.gz", "a.nii.gz", scope=("it is MR, the model knows CT only",), **common),
        SearchHit(0.5, "0/b", tmp_path / "b.nii.gz", "b.nii.gz", **common),
    ]
    widget.show_results(hits)
    flagged, plain = widget.results.item(0), widget.results.item(1)
    assert flagged.text().startswith("⚠") and "outside what the model knows" in flagged.text()
    assert "it is MR" in flagged.toolTip() and flagged.data(SCOPE_ROLE) == ["it is MR, the model knows CT only"]
    assert not plain.text().startswith("⚠") and plain.data(SCOPE_ROLE) == []
    assert flagged.data(Qt.ItemDataRole.UserRole) == str(tmp_path / "a.nii.gz")
