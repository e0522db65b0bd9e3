"""The Retrieval dock screenshot of docs/retrieval.md: the phantom retrieval evaluation
(`python -m training.evaluation.retrieval_phantoms`), then the dock with real results for the first
case's report and the best hit opened, as a user would see it.

    xvfb-run -a .venv/bin/python scripts/retrieval_screenshot.py --out docs/images/retrieval_dock.png \
        --data phantoms --db phantom-index --model embedded
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_med3dvlm.retrieval import VolumeIndex, search_text


def take_screenshot(index: VolumeIndex, embedder, query: str, path: Path) -> None:
    """The dock with real results for ``query`` and the best hit opened, as a user would see it
    (needs a display; use xvfb-run on a headless machine)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_med3dvlm.widgets.retrieval import RetrievalWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    widget = RetrievalWidget(viewer)
    widget.embedder_factory = lambda: embedder
    viewer.window.add_dock_widget(widget, name="Retrieval", area="right")
    widget.set_index_path(index.path)
    first_sentence = query.split(". ")[0].strip().rstrip(".")
    widget.query_edit.setText(first_sentence)
    widget.query_edit.setCursorPosition(0)
    widget.k_spin.setValue(6)
    hits = search_text(index, embedder, first_sentence, k=6)
    widget.show_results(hits)  # what the search worker hands the dock
    viewer.open(str(hits[0].path), plugin="napari-med3dvlm")  # what a double-click does
    viewer.dims.set_point(0, viewer.dims.range[0].start + (viewer.dims.range[0].stop - viewer.dims.range[0].start) / 2)
    for _ in range(20):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    print(f"screenshot: {path}")


def main(argv=None) -> int:
    from training.evaluation.retrieval_phantoms import main as evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    args, rest = parser.parse_known_args(argv)
    evaluate(rest, after=lambda index, embedder, query: take_screenshot(index, embedder, query, args.out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
