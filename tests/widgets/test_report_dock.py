import json
import time

from napari_med3dvlm.widgets import ReportWidget


def generate_with_heartbeat(dock, qtbot, heartbeat):
    pieces = []
    dock.runner.piece.connect(pieces.append)
    with heartbeat() as beat:
        with qtbot.waitSignal(dock.runner.done, timeout=60_000):
            dock.generate_button.click()
            assert dock.stop_button.isEnabled() and not dock.generate_button.isEnabled()
    dock.runner.piece.disconnect(pieces.append)
    return beat, pieces


def test_report_streams_without_blocking_the_viewer(viewer_with_sample, engine, qtbot, heartbeat):
    viewer, layer = viewer_with_sample
    engine.update_settings(engine.settings.updated(max_new_tokens=150))  # loading + ~1 s of tokens
    dock = ReportWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Report")
    assert dock.layer_picker.layer() is layer
    beat, pieces = generate_with_heartbeat(dock, qtbot, heartbeat)
    if beat.max_gap >= 0.1:
        # One retry, again from an unloaded model, absorbs a scheduler hiccup on a shared machine;
        # work done on the GUI thread would stall both runs.
        engine.unload()
        qtbot.waitUntil(lambda: dock.generate_button.isEnabled())
        beat, pieces = generate_with_heartbeat(dock, qtbot, heartbeat)
    assert len(pieces) > 10
    assert dock.record is not None and dock.text.toPlainText() == dock.record.text != ""
    assert not dock.record.stopped and "Done" in dock.status.label.text()
    assert beat.ticks > 5 and beat.max_gap < 0.1, f"event loop stalled {beat.max_gap * 1000:.0f} ms"
    qtbot.waitUntil(lambda: dock.generate_button.isEnabled())
    dock.copy_button.click()
    from qtpy.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == dock.record.text


def test_stop_keeps_the_partial_report(viewer_with_sample, engine, qtbot):
    viewer, _ = viewer_with_sample
    engine.update_settings(engine.settings.updated(max_new_tokens=200))
    model, _ = engine.load()
    hook = model.language_model.register_forward_pre_hook(lambda *args: time.sleep(0.01))
    try:
        dock = ReportWidget(viewer)
        pieces = []
        dock.runner.piece.connect(pieces.append)
        dock.generate()
        qtbot.waitUntil(lambda: len(pieces) >= 2, timeout=30_000)
        stopped_at = time.perf_counter()
        with qtbot.waitSignal(dock.runner.done, timeout=5_000):
            dock.stop_button.click()
        assert time.perf_counter() - stopped_at < 1.0  # a full run takes over 2 s
    finally:
        hook.remove()
    assert dock.record.stopped
    assert len(engine.load()[1](dock.record.text)["input_ids"]) < 150  # well short of the 200 asked for
    assert dock.text.toPlainText() == dock.record.text == "".join(pieces).strip() != ""
    assert "stopped" in dock.status.label.text().lower()


def test_export_writes_markdown_and_json_without_identifiers(viewer_with_sample, qtbot, tmp_path):
    viewer, layer = viewer_with_sample
    layer.name = "DOE^JANE 1961-02-03"  # a layer name a careless user might have
    dock = ReportWidget(viewer)
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        dock.generate()
    md, js = dock.export(tmp_path / "exports" / "case.md")
    assert md.exists() and js.exists()
    record = json.loads(js.read_text())
    for field in ("report", "model_id", "preprocessing", "generation", "created_utc", "disclaimer", "volume"):
        assert field in record
    assert "research use only" in record["disclaimer"].lower()
    assert record["generation"]["max_new_tokens"] == 24
    assert record["preprocessing"]["output_shape"] == [32, 64, 64]
    assert record["report"] == dock.record.text
    for text in (md.read_text(), js.read_text()):
        assert "DOE" not in text and "1961" not in text
        assert str(tmp_path.parent) not in text  # no local paths either
    assert "Research use only" in md.read_text()


def test_a_model_that_cannot_load_is_a_message_not_a_dead_viewer(viewer_with_sample, engine, qtbot, tmp_path):
    viewer, _ = viewer_with_sample
    engine.update_settings(engine.settings.updated(model_source=str(tmp_path / "missing-model")))
    dock = ReportWidget(viewer)
    with qtbot.waitSignal(dock.runner.failed, timeout=30_000) as failure:
        dock.generate()
    assert "Model source" in failure.args[0]
    qtbot.waitUntil(lambda: dock.generate_button.isEnabled())
    assert "Error" in dock.status.label.text() and dock.record is None


def test_each_layer_keeps_its_own_report(viewer_with_sample, qtbot):
    import numpy as np

    viewer, layer = viewer_with_sample
    dock = ReportWidget(viewer)
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        dock.generate()
    first = dock.record
    other = viewer.add_image(np.zeros((8, 16, 16), dtype=np.int16), name="other", metadata={"modality": "CT"})
    dock.layer_picker.set_layer(other)
    assert dock.record is None and dock.text.toPlainText() == "" and not dock.export_button.isEnabled()
    dock.layer_picker.set_layer(layer)
    assert dock.record is first and dock.text.toPlainText() == first.text
