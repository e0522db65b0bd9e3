"""Docks against a real napari viewer (under Xvfb): a tiny model saved to a temporary folder, or the embedded demo model."""

import time

import pytest
from qtpy.QtCore import QTimer


def open_sample(viewer):
    """The plugin's phantom CT sample (as a user opens it from File > Open Sample)."""
    layers = viewer.open_sample("napari-med3dvlm", "phantom_ct")
    return layers[0]


@pytest.fixture
def viewer_with_sample(make_napari_viewer, engine):
    viewer = make_napari_viewer()
    layer = open_sample(viewer)
    return viewer, layer


@pytest.fixture
def demo_engine(config_dir):
    """The engine as a user gets it out of the box: the embedded demo model, on the CPU."""
    from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, set_engine

    engine = InferenceEngine(InferenceSettings(model_source="embedded", device="cpu", max_new_tokens=96))
    previous = set_engine(engine)
    yield engine
    set_engine(previous)
    engine.unload()


class Heartbeat:
    """Records the largest gap between 10 ms timer ticks: how long the event loop was blocked."""

    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.max_gap = 0.0
        self.ticks = 0

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        self.ticks += 1

    def __enter__(self):
        self.last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()


@pytest.fixture
def heartbeat():
    """The `Heartbeat` class: ``with heartbeat() as beat:`` around work that must not block the viewer."""
    return Heartbeat
