""""Show where" for the Report and Chat docks: a relevance map of a span of text, computed in a
worker (progress in the dock's status line, the button cancels), added as an image layer over the
source layer (its scale and translate, inferno, additive, opacity 0.6)."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from napari_med3dvlm.inference import get_engine
from napari_med3dvlm.inference.relevance import layer_kwargs, stream_relevance

from ._common import RELEVANCE_KEY, StreamRunner, layer_key, volume_input

SHOW_TEXT = "Show where"
CANCEL_TEXT = "Cancel"


class WhereRunner(QObject):
    """Owns the worker and the button: ``start(layer, target)``; pressing the button again cancels."""

    added = Signal(object)  # the new napari layer

    def __init__(self, viewer, button, status, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.button = button
        self.status = status
        self.runner = StreamRunner(self)
        self._source = None
        self._cancelled = False
        button.setText(SHOW_TEXT)
        self.runner.piece.connect(lambda message: self.status.busy(message))  # status may be set later
        self.runner.done.connect(self._done)
        self.runner.failed.connect(lambda message: self.status.idle(f"Error: {message}"))
        self.runner.running_changed.connect(self._running_changed)

    @property
    def running(self) -> bool:
        return self.runner.running

    def start(self, layer, target) -> bool:
        """Explain ``target`` (a `SpanTarget` or ``target(engine)``) on ``layer``; False if busy."""
        if self.runner.running or layer is None:
            return False
        self._source = layer
        self._cancelled = False
        self.status.busy("Starting the relevance map…")
        self.runner.start(stream_relevance, get_engine(), volume_input(layer), target)
        return True

    def cancel(self) -> None:
        self._cancelled = True
        self.runner.stop()

    def _running_changed(self, running: bool) -> None:
        self.button.setText(CANCEL_TEXT if running else SHOW_TEXT)
        self.button.setToolTip(
            "Stop computing the map" if running
            else "Map where in the volume the model looked for the selected text (a sentence, or an answer)"
        )

    def _done(self, result) -> None:
        source = self._source
        if result is None or self._cancelled:
            self.status.idle("Relevance map cancelled.")
            return
        if source is None or source not in self.viewer.layers:
            self.status.idle("The layer was closed before the map was ready.")
            return
        kwargs = layer_kwargs(result, source.scale, source.translate)
        kwargs["metadata"] = {RELEVANCE_KEY: {**result.to_dict(), "source": layer_key(source)}}
        layer = self.viewer.add_image(result.layer, **kwargs)
        self.status.idle(f"Map of “{result.label}” in {result.duration_s:.1f} s ({result.method})")
        self.added.emit(layer)
