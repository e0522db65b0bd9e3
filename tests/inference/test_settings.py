import json

import pytest

from napari_med3dvlm.inference import InferenceSettings, load_settings, save_settings


def test_settings_round_trip_through_the_config_folder(config_dir):
    assert load_settings() == InferenceSettings()  # nothing saved yet
    saved = InferenceSettings(model_source="some/model", device="cpu", max_new_tokens=64, temperature=0.7)
    path = save_settings(saved)
    assert path.parent == config_dir
    assert load_settings() == saved


def test_unreadable_or_newer_settings_files_still_load(config_dir):
    config_dir.mkdir()
    (config_dir / "settings.json").write_text("{not json")
    assert load_settings() == InferenceSettings()
    (config_dir / "settings.json").write_text(json.dumps({"max_new_tokens": 9, "from_the_future": 1}))
    assert load_settings().max_new_tokens == 9


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError):
        InferenceSettings(device="tpu")
    with pytest.raises(ValueError):
        InferenceSettings(max_new_tokens=0)


def test_greedy_unless_a_temperature_is_set():
    assert InferenceSettings().generation_kwargs()["do_sample"] is False
    sampled = InferenceSettings(temperature=0.8).generation_kwargs()
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.8
