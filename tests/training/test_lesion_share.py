"""The auxiliary lesion-share loss of the LLM stages: it makes the projector give the findings more of
its output's variance (what the language model learns from), reads its targets from the phantoms'
truth, logs itself beside the language-model loss, and is never saved into a model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tiny_setup import tiny_preset
from training.stages.lesion_share import LesionShare, finding_targets


def _share(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Between-class share of the variance of ``features`` (cases x dims) for 0/1 ``labels``."""
    centred = features - features.mean(0)
    total = (centred ** 2).sum(1).mean()
    between = sum((labels == c).float().mean() * (centred[labels == c].mean(0) ** 2).sum() for c in (0, 1))
    return float(between / total)


class _Projector(nn.Module):
    """Stand-in for the mixer: (low, high) tokens -> (cases, 4 tokens, 8)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 32)

    def forward(self, low, high):
        return self.linear(torch.cat([low, high], -1).flatten(1)).view(len(low), 4, 8)


def test_the_loss_moves_the_projectors_variance_towards_the_findings():
    torch.manual_seed(0)
    cases = 512
    labels = (torch.rand(cases) < 0.3).float()
    low = torch.randn(cases, 1, 4) * torch.tensor([5.0, 5.0, 5.0, 0.3])  # the finding: a faint fourth feature
    low[:, 0, 3] += labels
    high = torch.randn(cases, 1, 2)
    projector = _Projector()
    loss = LesionShare(low, high, labels[:, None], projector, batch=64)
    with torch.no_grad():
        before = _share(projector(low, high).flatten(1), labels)
    optimizer = torch.optim.Adam([*projector.parameters(), *loss.parameters()], lr=1e-2)
    first = None
    for _ in range(300):
        value = loss(projector)
        first = float(value.detach()) if first is None else first
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = _share(projector(low, high).flatten(1), labels)
    assert before < 0.05 and after > 4 * before, (before, after)  # measured: 0.005 -> 0.13
    assert float(value.detach()) < first
    # only training calls move the running statistics
    loss.eval()
    mean = loss.mean.clone()
    loss(projector)
    assert torch.equal(mean, loss.mean)


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from napari_med3dvlm.phantoms.writers import WriteOptions, write_split
    from tiny_setup import IMAGE_SIZE

    root = tmp_path_factory.mktemp("phantoms")
    write_split(root, {"train": 4, "test": 2}, seed=3, options=WriteOptions(size=IMAGE_SIZE, nifti=False), workers=1)
    return root


def test_targets_are_each_cases_findings_from_its_truth(phantom_data):
    from napari_med3dvlm.phantoms.findings import truth_findings

    entries = json.loads((phantom_data / "M3D_Cap.json").read_text())["train"]
    names, targets = finding_targets(phantom_data, entries)
    assert targets.shape == (len(entries), len(names)) and len(set(names)) == len(names)
    for row, entry in zip(targets, entries):
        case = json.loads((phantom_data / entry["text"]).with_name("case.json").read_text())
        assert {names[i] for i in row.nonzero().flatten().tolist()} == {(f.kind, f.site) for f in truth_findings(case)}


def test_fine_tuning_with_the_loss_logs_it_and_saves_no_part_of_it(tmp_path, phantom_data):
    from safetensors.torch import load_file

    from training.run import run_stage

    config = tiny_preset(tmp_path, phantom_data, finetune={
        "from_scratch": True, "max_steps": 3, "cache_vision_features": True, "train_vision": False, "lesion_share_weight": 0.5,
        "lesion_share_batch": 2})
    run_stage(config, "finetune")
    records = [json.loads(line) for line in (tmp_path / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "lesion_share" in r]
    assert logged and all(r["lesion_share"] > 0 for r in logged)
    for r in logged:  # the logged loss is the language model's plus the weighted auxiliary term
        assert r["loss"] == pytest.approx(r["lm_loss"] + 0.5 * r["lesion_share"], rel=1e-4)
    saved = load_file(str(tmp_path / "runs" / "finetune" / "final" / "trainable.safetensors"))
    assert saved and not any("lesion_share" in key or "directions" in key for key in saved)


def test_the_loss_needs_the_cached_frozen_encoder_and_phantom_truth(tmp_path, tiny_data, phantom_data):
    from training.checks import InputError
    from training.run import run_stage

    config = tiny_preset(tmp_path, phantom_data, finetune={"from_scratch": True, "lesion_share_weight": 1.0,
                                                          "cache_vision_features": True, "train_vision": True})
    with pytest.raises(InputError, match=r"finetune: lesion_share_weight reads the frozen encoder's cached tokens"):
        run_stage(config, "finetune")
    config = tiny_preset(tmp_path, tiny_data, projector={"from_scratch": True, "lesion_share_weight": 1.0,
                                                         "cache_vision_features": True})
    with pytest.raises(InputError, match=r"projector: lesion_share_weight needs phantom training cases .*"
                                         r"projector.lesion_share_weight=0"):
        run_stage(config, "projector")
