""""Show where": a relevance map of a report sentence or a chat answer, as an image layer that lies
over the source volume (same physical extent), computed in a worker that the button cancels."""

import numpy as np
import pytest
from qtpy.QtGui import QTextCursor

from napari_med3dvlm.inference.relevance import sentence_spans, short_label
from napari_med3dvlm.phantoms._napari import render_sample
from napari_med3dvlm.widgets import ChatWidget, ReportWidget
from napari_med3dvlm.widgets._common import RELEVANCE_KEY


def _select(edit, start, end):
    cursor = edit.textCursor()
    cursor.setPosition(start)
    cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
    edit.setTextCursor(cursor)


def _report(dock, qtbot, timeout=120_000):
    with qtbot.waitSignal(dock.runner.done, timeout=timeout):
        dock.generate_button.click()
    qtbot.waitUntil(lambda: dock.where_button.isEnabled(), timeout=5_000)
    return dock.record.text


def _show_where(dock, qtbot, viewer):
    before = len(viewer.layers)
    with qtbot.waitSignal(dock.where.added, timeout=120_000) as blocker:
        dock.where_button.click()
        assert dock.where_button.text() == "Cancel"  # the running map can be cancelled
    qtbot.waitUntil(lambda: dock.where_button.text() == "Show where", timeout=5_000)
    assert len(viewer.layers) == before + 1
    return blocker.args[0]


def _assert_aligned(where, layer):
    assert RELEVANCE_KEY in where.metadata
    assert where.data.shape == layer.data.shape
    np.testing.assert_allclose(where.scale, layer.scale)
    np.testing.assert_allclose(where.translate, layer.translate)
    np.testing.assert_allclose(where.extent.world, layer.extent.world)  # same physical extent
    assert where.colormap.name == "inferno" and str(where.blending) == "additive"
    assert 0.5 <= where.opacity <= 0.7
    assert float(where.data.max()) == 1.0 and float(where.data.min()) >= 0.0


def test_report_sentence_show_where_adds_an_aligned_map(viewer_with_sample, engine, qtbot):
    viewer, layer = viewer_with_sample
    dock = ReportWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Report")
    assert not dock.where_button.isEnabled()  # nothing to explain before a report
    text = _report(dock, qtbot, 60_000)
    start, end = sentence_spans(text)[0]
    _select(dock.text, start, end)
    assert dock.selected_span() == (start, end)
    where = _show_where(dock, qtbot, viewer)
    _assert_aligned(where, layer)
    assert where.metadata[RELEVANCE_KEY]["span"] == text[start:end]
    assert where.name.startswith("Where: ") and short_label(text[start:end]) in where.name
    assert where not in dock.layer_picker.layers()  # a map is not a volume to report on
    assert dock.layer_picker.layer() is layer


def test_cancel_adds_no_layer(viewer_with_sample, engine, qtbot):
    viewer, layer = viewer_with_sample
    dock = ReportWidget(viewer)
    _report(dock, qtbot, 60_000)
    before = len(viewer.layers)
    dock.where_button.click()
    assert dock.where.running and dock.where_button.text() == "Cancel"
    dock.where_button.click()  # cancel
    qtbot.waitUntil(lambda: not dock.where.running, timeout=60_000)
    assert len(viewer.layers) == before and "cancelled" in dock.status.label.text()
    assert dock.where_button.text() == "Show where"


def test_chat_answer_show_where(viewer_with_sample, engine, qtbot):
    viewer, layer = viewer_with_sample
    dock = ChatWidget(viewer)
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        assert dock.send("Which organ is abnormal?")
    answer = dock.conversation().turns[-1].answer
    assert dock.selected_answer() == (0, 0, len(answer.strip()))
    where = _show_where(dock, qtbot, viewer)
    _assert_aligned(where, layer)
    assert where.metadata[RELEVANCE_KEY]["span"] == answer.strip()


@pytest.mark.slow
def test_demo_model_sentence_map_over_the_sample(make_napari_viewer, demo_engine, qtbot):
    """The shipped demo model on the sample: the map of the report's first finding sentence lies
    over the volume. Where its maximum falls is printed: the demo model does not read focal findings
    (see docs/usage.md), so the maximum is not asserted to be in a lesion."""
    viewer = make_napari_viewer()
    layer = viewer.open_sample("napari-med3dvlm", "phantom_ct")[0]
    demo_engine.load()
    dock = ReportWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Report")
    text = _report(dock, qtbot)
    spans = sentence_spans(text)
    start, end = spans[1] if len(spans) > 1 else spans[0]  # the first sentence after the technique
    cursor = dock.text.textCursor()
    cursor.setPosition(start + 2)  # no selection: the sentence under the cursor
    dock.text.setTextCursor(cursor)
    where = _show_where(dock, qtbot, viewer)
    _assert_aligned(where, layer)
    assert where.metadata[RELEVANCE_KEY]["span"] == text[start:end]
    labels = render_sample().display_finding_labels()
    peak = np.unravel_index(int(np.argmax(where.data)), where.data.shape)
    body = np.asarray(layer.data) > -500
    assert body[peak]  # the map's maximum is on the body, not in the air around it
    print(f"demo model: {text[start:end]!r} -> maximum at {peak}, lesion label there {int(labels[peak])}")
