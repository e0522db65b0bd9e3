"""The SigLIP stage with a frozen text encoder: pooled reports cached on disk, a stage-level data root."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tiny_setup import tiny_preset, write_tiny_m3d


def _head_preset(tmp_path: Path, data: Path, stage_root: Path) -> dict:
    config = tiny_preset(tmp_path, data, siglip={"data_root": str(stage_root), "cache_text_features": True})
    config["model"].update(text_trainable="head", text_pooling="mean")
    return config


def _reset(config: dict) -> Path:
    folder = Path(config["output_dir"]) / "siglip"
    for name in ("DONE", "checkpoints", "final", "metrics.jsonl"):
        shutil.rmtree(folder / name, ignore_errors=True) if (folder / name).is_dir() else (folder / name).unlink(missing_ok=True)
    return folder


@pytest.mark.slow
def test_pooled_reports_let_another_machine_train_without_the_text_encoder_weights(tmp_path, tiny_data):
    """A run that only has a stand-in text encoder (`require`) trains exactly like the run that pooled."""
    from training.run import run_stage

    larger = write_tiny_m3d(tmp_path / "larger", n_train=12, seed=3)
    config = _head_preset(tmp_path, tiny_data, larger)

    stand_in = copy.deepcopy(config)
    stand_in["model"]["text_encoder_config"]["initializer_range"] = 0.5  # other weights, same shapes
    stand_in["siglip"]["cache_text_features"] = "require"
    with pytest.raises(RuntimeError, match="require"):
        run_stage(stand_in, "siglip")  # nothing pooled yet: refuses to pool with the stand-in

    _reset(config)
    info = run_stage(config, "siglip")
    assert info["samples"] == 12  # siglip.data_root, not data.root (8 training cases)
    folder = Path(config["output_dir"]) / "siglip"
    assert (folder / "text_features.safetensors").exists()
    reference = load_file(folder / "final" / "trainable.safetensors")

    _reset(config)
    run_stage(stand_in, "siglip")
    again = load_file(folder / "final" / "trainable.safetensors")
    assert reference.keys() == again.keys()
    assert all((reference[k] - again[k]).abs().max().item() == 0 for k in reference)
