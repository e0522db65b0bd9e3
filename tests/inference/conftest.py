"""A tiny Med3DVLM saved to a temporary folder once per session, loaded through the real loader,
and an engine using it that replaces the process-wide one for the duration of a test."""

import numpy as np
import pytest
from tiny_vlm import tiny_vlm

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, set_engine
from napari_med3dvlm.inference.settings import CONFIG_DIR_ENV


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from napari_med3dvlm.model import save_pretrained

    model, tokenizer = tiny_vlm()
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


@pytest.fixture
def ct_volume():
    """A small CT-like volume in HU: air, a soft-tissue body, a bright 'bone' and a dark 'cyst'."""
    z, y, x = np.mgrid[:24, :48, :48]
    data = np.full((24, 48, 48), -1000, dtype=np.int16)
    data[((y - 24) / 20) ** 2 + ((x - 24) / 22) ** 2 < 1] = 40
    data[(y - 30) ** 2 + (x - 24) ** 2 < 16] = 700
    data[(z - 12) ** 2 + (y - 18) ** 2 + (x - 30) ** 2 < 20] = 5
    return data
