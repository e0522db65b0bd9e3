"""The Retrieval dock in a real viewer: create an index, add a folder, query, see ranked results
with thumbnails, double-click to open a volume, search with a layer, cancel a long run."""

import sys
from pathlib import Path

import pytest
from qtpy.QtCore import Qt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
from retrieval_toys import CountingEmbedder, make_collection  # noqa: E402

from napari_med3dvlm.retrieval import VolumeIndex  # noqa: E402
from napari_med3dvlm.widgets.retrieval import RetrievalWidget  # noqa: E402


@pytest.fixture
def dock(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)  # mouse events need a visible dock
    widget = RetrievalWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Retrieval")
    embedder = CountingEmbedder()
    widget.embedder_factory = lambda: embedder
    widget.set_index_path(tmp_path / "index")
    return viewer, widget, embedder


def test_index_query_and_open_a_result(dock, tmp_path, qtbot):
    viewer, widget, embedder = dock
    root = tmp_path / "collection"
    make_collection(root, 5)

    with qtbot.waitSignal(widget.indexing_finished, timeout=60_000) as indexed:
        widget.add_folder(root)
    assert indexed.args[0].embedded == 5
    assert len(VolumeIndex(tmp_path / "index")) == 5
    assert "5 embedded" in widget.status.text()
    qtbot.waitUntil(lambda: not widget.busy)

    widget.query_edit.setText("bright round lesion")
    widget.k_spin.setValue(3)
    with qtbot.waitSignal(widget.results_changed, timeout=30_000) as shown:
        qtbot.mouseClick(widget.search_button, Qt.MouseButton.LeftButton)
    hits = shown.args[0]
    assert widget.results.count() == len(hits) == 3
    assert hits[0].score >= hits[1].score >= hits[2].score
    first = widget.results.item(0)
    assert not first.icon().isNull()
    assert f"{hits[0].score:.3f}" in first.text() and hits[0].relative_path in first.text()
    qtbot.waitUntil(lambda: not widget.busy)

    before = len(viewer.layers)
    rect = widget.results.visualItemRect(first)
    # A real double-click is press, release, double-click (item views track the pressed item).
    qtbot.mouseClick(widget.results.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(widget.results.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: len(viewer.layers) == before + 1, timeout=10_000)
    assert viewer.layers[-1].data.shape == tuple(hits[0].shape)

    # The opened volume as the query finds itself first.
    widget.layer_picker.set_layer(viewer.layers[-1])
    with qtbot.waitSignal(widget.results_changed, timeout=30_000) as shown:
        widget.search_layer()
    assert shown.args[0][0].path == hits[0].path and shown.args[0][0].score > 0.999


def test_refreshing_reuses_the_index(dock, tmp_path, qtbot):
    viewer, widget, embedder = dock
    root = tmp_path / "collection"
    make_collection(root, 3)
    for _ in range(2):
        with qtbot.waitSignal(widget.indexing_finished, timeout=60_000):
            widget.add_folder(root)
        qtbot.waitUntil(lambda: not widget.busy)
    assert embedder.volumes_embedded == 3  # the second pass only hashed files

    make_collection(root, 1, start_seed=50)  # a new volume arrives
    with qtbot.waitSignal(widget.indexing_finished, timeout=60_000) as refreshed:
        qtbot.mouseClick(widget.refresh_button, Qt.MouseButton.LeftButton)
    assert (refreshed.args[0].embedded, refreshed.args[0].unchanged) == (1, 3)
    assert embedder.volumes_embedded == 4


def test_cancel_stops_indexing_between_volumes(dock, tmp_path, qtbot):
    viewer, widget, embedder = dock
    embedder.delay = 0.5
    root = tmp_path / "collection"
    make_collection(root, 8)
    with qtbot.waitSignal(widget.indexing_finished, timeout=60_000) as indexed:
        widget.add_folder(root)
        qtbot.waitUntil(lambda: widget.progress.maximum() == 8, timeout=20_000)
        qtbot.mouseClick(widget.cancel_button, Qt.MouseButton.LeftButton)
    assert indexed.args[0].cancelled
    assert len(VolumeIndex(tmp_path / "index")) < 8
    assert "cancelled" in widget.status.text()


def test_a_missing_model_is_a_notification_not_a_crash(dock, tmp_path, qtbot, monkeypatch):
    from napari_med3dvlm.widgets import retrieval as module

    viewer, widget, embedder = dock
    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)

    def no_model():
        raise FileNotFoundError("The embedded demo SigLIP encoder has not been trained yet")

    widget.embedder_factory = no_model
    widget.query_edit.setText("liver")
    widget.search()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert shown and "not been trained" in shown[0]
    assert widget.search_button.isEnabled() and widget.add_button.isEnabled()
