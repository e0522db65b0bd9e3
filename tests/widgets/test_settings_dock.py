from napari_med3dvlm.inference import get_engine, load_settings
from napari_med3dvlm.widgets import SettingsWidget


def test_settings_are_applied_to_the_engine_and_saved(engine, tiny_model_dir, qtbot):
    dock = SettingsWidget(None)
    qtbot.addWidget(dock)
    assert dock.source_kind.currentData() == "folder"
    assert dock.source_path.text() == str(tiny_model_dir)
    dock.max_new_tokens.setValue(77)
    dock.temperature.setValue(0.5)
    assert dock.closed_answer.currentData() == "score"
    dock.closed_answer.setCurrentIndex(dock.closed_answer.findData("generate"))
    dock.apply_button.click()
    assert load_settings().closed_answer == "generate"
    assert get_engine().settings.max_new_tokens == 77
    assert load_settings().max_new_tokens == 77 and load_settings().temperature == 0.5
    assert "Saved" in dock.status.text()

    dock.source_kind.setCurrentIndex(dock.source_kind.findData("hub"))
    dock.source_path.setText("")
    assert not dock.apply()  # nothing entered: not saved
    assert load_settings().model_source == str(tiny_model_dir)
    dock.source_kind.setCurrentIndex(dock.source_kind.findData("embedded"))
    assert dock.apply() and load_settings().model_source == "embedded"
    assert not dock.source_path.isEnabled()
