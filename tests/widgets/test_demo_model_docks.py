"""The docks with the model a user gets by default: the embedded demo model (trained by
`python -m training.run all --preset demo`) on the plugin's phantom CT sample, in a real viewer."""

import json

import pytest

from napari_med3dvlm.widgets import ChatWidget, ReportWidget

# slow: the embedded demo model writes reports and answers in the docks
pytestmark = pytest.mark.slow


def _open_sample(viewer):
    return viewer.open_sample("napari-med3dvlm", "phantom_ct")[0]


def test_demo_model_writes_a_report_of_the_sample_and_exports_it(make_napari_viewer, demo_engine, qtbot, tmp_path, heartbeat):
    viewer = make_napari_viewer()
    layer = _open_sample(viewer)
    demo_engine.load()  # loading is a worker too (tested with the tiny model); here: generation
    dock = ReportWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Report")
    pieces = []
    dock.runner.piece.connect(pieces.append)
    with heartbeat() as beat:
        with qtbot.waitSignal(dock.runner.done, timeout=120_000):
            dock.generate_button.click()
    print(f"demo report: {len(pieces)} pieces, largest event-loop gap {beat.max_gap * 1000:.0f} ms")
    assert beat.ticks > 5 and beat.max_gap < 0.1, f"event loop stalled {beat.max_gap * 1000:.0f} ms"
    assert len(pieces) > 10 and dock.record is not None
    report = dock.record.text.lower()
    # The sample is an axial portal-venous abdomen CT: the report says so in the phantom reports' words.
    assert "abdomen" in report and "ct" in report
    md, js = dock.export(tmp_path / "sample.md")
    record = json.loads(js.read_text())
    assert record["model_id"] == demo_engine.model_id and record["report"] == dock.record.text
    assert record["preprocessing"]["output_shape"] == [32, 128, 128]  # the demo model's input size


def test_demo_model_answers_two_chat_turns_about_the_sample(make_napari_viewer, demo_engine, qtbot):
    viewer = make_napari_viewer()
    layer = _open_sample(viewer)
    demo_engine.load()
    dock = ChatWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Chat")
    for question in ("Which imaging plane is shown?", "In which phase was this CT acquired?"):
        with qtbot.waitSignal(dock.runner.done, timeout=120_000):
            dock.input.setText(question)
            qtbot.keyClick(dock.input, "\r")
    turns = dock.conversation(layer).turns
    assert [t.question for t in turns] == ["Which imaging plane is shown?", "In which phase was this CT acquired?"]
    assert all(t.answer.strip() for t in turns)
    assert "axial" in turns[0].answer.lower()


def test_demo_model_picks_the_right_choice_for_the_sample(make_napari_viewer, demo_engine, qtbot):
    viewer = make_napari_viewer()
    layer = _open_sample(viewer)
    demo_engine.load()
    dock = ChatWidget(viewer)
    dock.closed_mode.setChecked(True)
    dock.input.setText("Which imaging plane is shown?")
    for edit, text in zip(dock.choice_inputs, ["Sagittal", "Axial", "Coronal", "Oblique"]):
        edit.setText(text)
    with qtbot.waitSignal(dock.runner.done, timeout=120_000):
        assert dock.send()
    answer = dock.conversation(layer).turns[-1].answer
    assert answer == "B. Axial"  # ranked choices (the default closed-answer mode)


def test_stop_ends_a_demo_model_report_midway(make_napari_viewer, demo_engine, qtbot):
    import time

    viewer = make_napari_viewer()
    _open_sample(viewer)
    model, tokenizer = demo_engine.load()
    # ~20 ms per token, so the report (about 60 tokens) is still being written when Stop lands.
    hook = model.language_model.register_forward_pre_hook(lambda *args: time.sleep(0.02))
    try:
        dock = ReportWidget(viewer)
        pieces = []
        dock.runner.piece.connect(pieces.append)
        dock.generate()
        qtbot.waitUntil(lambda: len(pieces) >= 3, timeout=60_000)
        clicked = time.perf_counter()
        with qtbot.waitSignal(dock.runner.done, timeout=5_000):
            dock.stop_button.click()
        assert time.perf_counter() - clicked < 1.0
    finally:
        hook.remove()
    assert dock.record.stopped and dock.record.text != ""
    assert len(tokenizer(dock.record.text)["input_ids"]) < 40
    assert "stopped" in dock.status.label.text().lower()
