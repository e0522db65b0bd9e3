"""Pieces every dock shares: picking an image layer, turning it into engine input, and running a
streaming task off the GUI thread with a Stop button that works.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QWidget

from napari_med3dvlm.io import Volume, layer_plane

#: Layer metadata key where the Volume dock stores the window the model should use.
MODEL_WINDOW_KEY = "med3dvlm_window"
#: Layer metadata key marking a "what the model sees" overlay (value: the source layer's key).
MODEL_INPUT_KEY = "med3dvlm_model_input"
#: Layer metadata key of a "Show where" relevance map (`widgets._relevance`); not a volume either.
RELEVANCE_KEY = "med3dvlm_relevance"


def is_volume_layer(layer) -> bool:
    """3D grey-level image layers, except our own model-input overlays (already preprocessed) and
    relevance maps."""
    if not isinstance(layer, Image) or layer.ndim != 3 or layer.rgb:
        return False
    meta = layer.metadata or {}
    return MODEL_INPUT_KEY not in meta and RELEVANCE_KEY not in meta


def layer_array(layer) -> np.ndarray:
    """Full-resolution data (level 0 of a multiscale layer)."""
    return layer.data[0] if layer.multiscale else layer.data


def layer_modality(layer) -> str:
    meta = layer.metadata or {}
    modality = meta.get("modality") or getattr(meta.get("volume"), "modality", None)
    return str(modality or "CT")


def layer_window(layer):
    """The window the model sees: the Volume dock's choice, else the file's, else the default."""
    meta = layer.metadata or {}
    if meta.get(MODEL_WINDOW_KEY) is not None:
        return meta[MODEL_WINDOW_KEY]
    window = meta.get("window")
    if window is not None and not isinstance(window, str):
        return tuple(float(v) for v in window)
    return None


def volume_input(layer) -> Volume:
    """The layer as the `io.Volume` the model is given: its data in place, world scale and
    translate, modality, the window the model sees, and the acquisition plane our reader recorded."""
    return Volume(
        data=layer_array(layer),
        spacing=tuple(float(s) for s in layer.scale[-3:]),
        origin=tuple(float(t) for t in layer.translate[-3:]),
        modality=layer_modality(layer),
        window=layer_window(layer),
        plane=layer_plane(getattr(layer, "metadata", None)),
    )


def layer_key(layer) -> str:
    """A stable per-layer key (survives renames) for per-layer state such as conversations."""
    return str(getattr(layer, "unique_id", id(layer)))


class LayerPicker(QComboBox):
    """A combo box of the viewer's 3D image layers that follows layers being added, removed and
    renamed, and keeps the current choice when it can."""

    layer_changed = Signal(object)  # the Image layer, or None

    def __init__(self, viewer, parent=None, exclude: Callable | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self._exclude = exclude or (lambda layer: False)
        self.setToolTip("The image layer to work on")
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit(self.layer()))
        events = viewer.layers.events
        events.inserted.connect(self.refresh)
        events.removed.connect(self.refresh)
        events.reordered.connect(self.refresh)
        self.refresh()

    def layers(self) -> list:
        return [layer for layer in self.viewer.layers if is_volume_layer(layer) and not self._exclude(layer)]

    def refresh(self, event=None) -> None:
        current = self.layer()
        layers = self.layers()
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            self.addItem(layer.name, layer)
            layer.events.name.disconnect(self._renamed)
            layer.events.name.connect(self._renamed)
        index = layers.index(current) if current in layers else (len(layers) - 1 if layers else -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if self.layer() is not current:
            self.layer_changed.emit(self.layer())

    def _renamed(self, event=None) -> None:
        for i in range(self.count()):
            self.setItemText(i, self.itemData(i).name)

    def layer(self):
        return self.currentData() if self.currentIndex() >= 0 else None

    def set_layer(self, layer) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return


class BusyIndicator(QWidget):
    """A status line with an indeterminate progress bar, shown while a task runs."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        self.bar.setMaximumWidth(90)
        self.bar.setMaximumHeight(12)
        self.bar.setTextVisible(False)
        self.bar.hide()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.bar)

    def busy(self, text: str) -> None:
        self.label.setText(text)
        self.bar.show()

    def idle(self, text: str = "") -> None:
        self.label.setText(text)
        self.bar.hide()


class TaskError(Exception):
    """A task failure re-raised so that napari's worker reports it.

    napari workers silently drop ``RuntimeError`` (they take it for a deleted Qt object), and
    torch reports most failures as ``RuntimeError``.
    """


def guarded(task: Callable, *args, **kwargs):
    """Run generator ``task`` and re-raise its ``RuntimeError`` as `TaskError`."""
    try:
        return (yield from task(*args, **kwargs))
    except RuntimeError as err:
        raise TaskError(str(err) or type(err).__name__) from err


def guarded_call(func: Callable, *args, **kwargs):
    """`guarded` for plain functions."""
    try:
        return func(*args, **kwargs)
    except RuntimeError as err:
        raise TaskError(str(err) or type(err).__name__) from err


def run_in_worker(
    function: Callable,
    *args,
    returned: Callable | None = None,
    errored: Callable | None = None,
    finished: Callable | None = None,
    yielded: Callable | None = None,
    start: bool = True,
    **kwargs,
):
    """The one way the docks run work off the GUI thread: a napari worker (``create_worker``) for
    ``function(*args, **kwargs)`` with its signals connected, started (unless ``start`` is false:
    the caller records it first), and returned.

    A generator function streams what it yields (``yielded``) and hands its return value to
    ``returned``. `RuntimeError` is re-raised as `TaskError` (napari would drop it), and errors only
    reach ``errored``, never the event loop.
    """
    wrapper = guarded if inspect.isgeneratorfunction(function) else guarded_call
    worker = create_worker(wrapper, function, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    for signal, slot in (("yielded", yielded), ("returned", returned), ("errored", errored), ("finished", finished)):
        if slot is not None:
            getattr(worker, signal).connect(slot)
    if start:
        worker.start()
    return worker


class StreamRunner(QObject):
    """Runs a task generator (``yield`` text pieces, ``return`` a result) in a napari worker.

    Stop sets a cancel event that the engine checks after every token, so the partial text stays
    and the task still returns its result. Errors become napari notifications, never exceptions
    in the event loop.
    """

    piece = Signal(str)
    done = Signal(object)  # the task's return value, once the runner is idle again
    failed = Signal(str)
    running_changed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.worker = None
        self.cancel_event: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, task: Callable, *args, **kwargs) -> None:
        """``task(*args, cancel_event=..., **kwargs)`` must be a generator function."""
        if self.running:
            raise RuntimeError("a task is already running")
        self.cancel_event = threading.Event()
        self._result = self._no_result = object()
        self.worker = run_in_worker(
            task,
            *args,
            cancel_event=self.cancel_event,
            yielded=self.piece.emit,
            returned=self._on_returned,
            errored=self._on_error,  # errors are shown as notifications
            finished=self._on_finished,
            start=False,
            **kwargs,
        )
        self.running_changed.emit(True)
        self.worker.start()

    def stop(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()

    def _on_error(self, err: BaseException) -> None:
        message = str(err) or type(err).__name__
        show_error(message)
        self.failed.emit(message)

    def _on_returned(self, result) -> None:
        self._result = result

    def _on_finished(self) -> None:
        self.worker = None
        self.running_changed.emit(False)
        if self._result is not self._no_result:
            self.done.emit(self._result)

    def wait(self, timeout_ms: int = 10_000) -> None:
        """Block until the task ends (headless use); processes Qt events meanwhile."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self.running and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            threading.Event().wait(0.005)


_BANNER_PADDING = 4


class ScopeBanner(QLabel):
    """A one-line, non-blocking warning shown above an answer when the volume is outside what the
    model knows (`napari_med3dvlm.inference.scope`); hidden when in scope or turned off in Settings."""

    #: Emitted from worker threads with a ScopeResult; queued to the GUI thread.
    checked = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setObjectName("med3dvlm_scope_warning")
        self.setStyleSheet(
            "QLabel { background: #5c4300; color: #ffe9a8; border: 1px solid #c99a00; border-radius: 3px; "
            f"padding: {_BANNER_PADDING}px; }}"
        )
        self.hide()
        self.checked.connect(self.show_result)

    def report(self, result) -> None:
        """Thread-safe ``on_scope`` callback for the inference tasks."""
        self.checked.emit(result)

    def show_result(self, result) -> None:
        """Show a ScopeResult or its ``to_dict()`` (from a stored record); None hides the banner."""
        from napari_med3dvlm.inference import get_engine

        text, reasons = "", []
        if isinstance(result, dict):
            text, reasons = result.get("headline") or result.get("warning") or "", result.get("reasons") or []
        elif result is not None:
            text, reasons = result.headline(), result.messages
        if not text or not get_engine().settings.scope_warnings:
            self.clear()
            self.hide()
            return
        self.setText("⚠ " + text)
        self._fit_height()
        self.setToolTip(
            "\n".join(["Why:", *(f"• {r}" for r in reasons), "",
                       "The model still answers; whether to trust it is your call. Turn this off in Settings."])
        )
        self.show()

    def _fit_height(self) -> None:
        """Word-wrapped labels get too little height in a crowded dock: reserve the wrapped text's
        height at the current width (QLabel.heightForWidth misjudges it under a style sheet)."""
        from qtpy.QtCore import QRect, Qt

        inner = self.contentsRect().width() - 2 * _BANNER_PADDING
        if inner <= 0 or not self.text():
            return
        box = self.fontMetrics().boundingRect(QRect(0, 0, inner, 100_000), int(Qt.TextFlag.TextWordWrap), self.text())
        self.setFixedHeight(box.height() + 2 * (_BANNER_PADDING + 1) + 4)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()
