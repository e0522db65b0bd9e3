"""Docks against a real napari viewer (under Xvfb) and a tiny model saved to a temporary folder."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, set_engine
from napari_med3dvlm.inference.settings import CONFIG_DIR_ENV


def _tiny_vlm_module():
    """tests/inference/tiny_vlm.py, found by path (the suite runs with --import-mode=importlib)."""
    name = "med3dvlm_tests_tiny_vlm"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "inference" / "tiny_vlm.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from napari_med3dvlm.model import save_pretrained

    model, tokenizer = _tiny_vlm_module().tiny_vlm()
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def engine(tiny_model_dir, config_dir):
    settings = InferenceSettings(model_source=str(tiny_model_dir), device="cpu", max_new_tokens=24)
    engine = InferenceEngine(settings)
    previous = set_engine(engine)
    yield engine
    set_engine(previous)
    engine.unload()


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
def ct_volume():
    z, y, x = np.mgrid[:24, :48, :48]
    data = np.full((24, 48, 48), -1000, dtype=np.int16)
    data[((y - 24) / 20) ** 2 + ((x - 24) / 22) ** 2 < 1] = 40
    data[(y - 30) ** 2 + (x - 24) ** 2 < 16] = 700
    return data
