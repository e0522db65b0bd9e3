"""Suite-wide settings (never reach a model hub) and the fixtures several folders share: a tiny Med3DVLM
saved to a temporary folder once per session and loaded through the real loader, an engine using it
that replaces the process-wide one for the duration of a test, and a small CT-like volume."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, set_engine
from napari_med3dvlm.settings import CONFIG_DIR_ENV


def tiny_vlm_module():
    """tests/inference/tiny_vlm.py, found by path (the suite runs with --import-mode=importlib)."""
    name = "med3dvlm_tests_tiny_vlm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "inference" / "tiny_vlm.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from napari_med3dvlm.model import save_pretrained

    model, tokenizer = tiny_vlm_module().tiny_vlm()
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


@pytest.fixture
def ct_volume():
    """A small CT-like volume in HU: air, a soft-tissue body, a bright 'bone' and a dark 'cyst'."""
    z, y, x = np.mgrid[:24, :48, :48]
    data = np.full((24, 48, 48), -1000, dtype=np.int16)
    data[((y - 24) / 20) ** 2 + ((x - 24) / 22) ** 2 < 1] = 40
    data[(y - 30) ** 2 + (x - 24) ** 2 < 16] = 700
    data[(z - 12) ** 2 + (y - 18) ** 2 + (x - 30) ** 2 < 20] = 5
    return data
