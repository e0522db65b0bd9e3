"""The scope check without the demo model: statistics, the model-free checks, the setting, the CLI
and the exports (a tiny model folder given a scope.json that says it knows CT only)."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_med3dvlm.cli import main
from napari_med3dvlm.inference import InferenceSettings, load_settings, save_settings
from napari_med3dvlm.model.scope import (
    SCOPE_JSON,
    ScopeProfile,
    check_volume,
    fit_feature_stats,
    profile_for,
    vlm_feature,
    volume_reasons,
    weight_files,
)
from napari_med3dvlm.model.sources import content_fingerprint as weights_fingerprint

CT_PROFILE = ScopeProfile(modalities=("CT",), slice_spacing=(4.5, 8.0), pixel_spacing=(1.8, 3.0), min_slices=16)


def test_threshold_is_a_high_quantile_of_unseen_training_cases():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((6, 40))
    train = torch.tensor(rng.standard_normal((600, 6)) @ basis + 0.1 * rng.standard_normal((600, 40)))
    stats = fit_feature_stats(train, components=6, quantile=0.99)
    fresh = torch.tensor(rng.standard_normal((1000, 6)) @ basis + 0.1 * rng.standard_normal((1000, 40)))
    flagged = float((stats.distance(fresh) > stats.threshold).double().mean())
    assert flagged < 0.03  # ~1 % by construction
    shifted = fresh + torch.tensor(rng.standard_normal(40)) * 2.0  # another distribution
    assert bool((stats.distance(shifted) > stats.threshold).all())
    assert stats.info["heldout_flagged"] == pytest.approx(0.01, abs=0.005)


def test_model_free_reasons_name_what_is_unusual(ct_volume):
    def codes(data, modality="CT", spacing=(5.0, 2.0, 2.0), plane="axial"):
        return [r.code for r in volume_reasons(data, modality, spacing, plane, CT_PROFILE)]

    body = np.concatenate([ct_volume] * 2)  # 48 slices like the training stacks
    assert codes(body) == []
    assert codes(body, "MR") == ["modality"]
    assert codes(body[:1]) == ["slices"]  # a single slice
    assert codes(body[:3]) == ["slices"]  # a localizer-like slab
    assert codes(body + 1024) == ["intensity"]  # stored values, rescale not applied: no air
    assert codes(body.astype(np.float32) / 3000.0) == ["intensity"]  # normalised, not HU
    assert codes(body, spacing=(1.0, 0.5, 0.5)) == ["spacing"]
    reasons = volume_reasons(body, "MR", (1.0, 1.0, 1.0), "axial", CT_PROFILE)
    assert "MR" in reasons[0].message and "CT" in reasons[0].message
    assert "1 mm" in reasons[1].message and "training" in reasons[1].message


def test_feature_distance_flags_features_unlike_the_training_ones():
    rng = np.random.default_rng(1)
    train = torch.tensor(rng.standard_normal((200, 8, 12)), dtype=torch.float32) * 0.1 + 1.0
    profile = ScopeProfile(modalities=("CT",))
    profile.features["vlm"] = fit_feature_stats(vlm_feature(train), components=8)
    data = np.full((20, 16, 16), -1000, np.int16)
    data[:, 4:12, 4:12] = 40
    near = train[:1] + 0.01
    far = torch.full((1, 8, 12), 5.0)
    assert not check_volume(data, "CT", (5, 2, 2), "axial", profile, near).flagged
    result = check_volume(data, "CT", (5, 2, 2), "axial", profile, far)
    assert result.codes == ["features"] and result.distance > 1
    assert result.warning().startswith("Outside what this model knows: the image features")
    assert result.to_dict()["in_scope"] is False


def test_statistics_of_other_weights_are_not_used(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights v1" * 100)
    profile = ScopeProfile(modalities=("CT",))
    profile.features["vlm"] = fit_feature_stats(torch.randn(30, 5), components=2)
    profile.features["vlm"].info["weights"] = weights_fingerprint(weight_files(tmp_path, "vlm"))
    profile.save(tmp_path)
    assert "vlm" in ScopeProfile.load(tmp_path).features
    (tmp_path / "model.safetensors").write_bytes(b"weights v2" * 100)  # retrained, statistics not recomputed
    loaded = ScopeProfile.load(tmp_path)
    assert loaded.modalities == ("CT",) and "vlm" not in loaded.features
    assert ScopeProfile.load(tmp_path / "nothing").source == "defaults"


def test_the_setting_persists(config_dir):
    assert load_settings().scope_warnings is True
    save_settings(InferenceSettings(scope_warnings=False))
    assert load_settings().scope_warnings is False
    assert InferenceSettings.from_dict({"scope_warnings": "off"}).scope_warnings is False


@pytest.fixture
def ct_only_model(tiny_model_dir, tmp_path):
    """The tiny model in a folder whose scope.json says: synthetic CT only."""
    folder = tmp_path / "ct_only_model"
    shutil.copytree(tiny_model_dir, folder)
    ScopeProfile(modalities=("CT",), training_data="toy CT", advice="Load a model trained on MR.").save(folder)
    assert json.loads((folder / SCOPE_JSON).read_text())["modalities"] == ["CT"]
    return folder


@pytest.fixture
def mr_nifti(tmp_path):
    z, y, x = np.mgrid[:24, :40, :40]
    data = (300 + 200 * np.exp(-((y - 20) ** 2 + (x - 20) ** 2) / 80.0)).astype(np.int16)
    path = tmp_path / "t1.nii.gz"
    image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), np.diag([1.0, 1.0, 1.0, 1.0]))
    image.header["descrip"] = b"T1w MRI"
    nib.save(image, str(path))
    return path


def test_cli_warns_on_stderr_exports_the_reasons_and_still_reports(engine, ct_only_model, mr_nifti, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["report", str(mr_nifti), "--out", str(out), "--model", str(ct_only_model)]) == 0
    err = capsys.readouterr().err
    assert "warning: input 1 series 1: Outside what this model knows: it is MR, the model knows CT only" in err
    assert "Load a model trained on MR." in err
    record = json.loads((out / "report-01.json").read_text())
    assert record["report"]  # generation still ran
    assert record["scope"]["in_scope"] is False and record["scope"]["codes"] == ["modality"]
    markdown = (out / "report-01.md").read_text()
    assert markdown.index("> **Warning:** Outside what this model knows") < markdown.index("## Findings")
    assert "Scope check: flagged: it is MR" in markdown

    assert main(["ask", str(mr_nifti), "What is shown?", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "Outside what this model knows" in captured.err and captured.out.strip()

    assert main(["ask", str(mr_nifti), "What is shown?", "--max-new-tokens", "4", "--no-scope-warning"]) == 0
    assert "Outside" not in capsys.readouterr().err


def test_in_scope_volume_gets_no_warning(engine, ct_only_model, ct_volume, tmp_path, capsys):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct_volume.transpose(2, 1, 0)), np.diag([1.0, 1.0, 2.0, 1])), str(path))
    out = tmp_path / "reports"
    assert main(["report", str(path), "--out", str(out), "--model", str(ct_only_model)]) == 0
    assert "Outside" not in capsys.readouterr().err
    record = json.loads((out / "report-01.json").read_text())
    assert record["scope"]["in_scope"] is True and record["scope"]["reasons"] == []
    assert "Warning" not in (out / "report-01.md").read_text()
    assert profile_for(str(ct_only_model)).training_data == "toy CT"
