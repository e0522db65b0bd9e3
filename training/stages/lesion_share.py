"""An auxiliary loss for the LLM stages: make the lesions a larger part of what the language model reads.

What the language model learns from its image embeddings follows how much of their variance a signal
holds, not whether a standardising linear probe can find it (docs/training.md, "Where the lesions
are"): on the demo encoders the contrast phase, 0.6 % of the projector output's variance, was never
learned, and at 11 % it was learned within two thousand steps, while each focal lesion kind stays near
1 % and is read slowly. This loss asks the projector to give the findings more of that variance.

Each call takes ``batch`` training cases at random from the frozen encoder's cached tokens, runs the
projector, centres and scales its flattened output with running statistics (so that growing every
direction at once gains nothing), and scores one unit-length direction per finding (kind and site, as
the generator's truth lists them) with a fixed scale: ``logit = scale * <direction, z> + bias``, binary
cross-entropy against the case's findings. With unit directions and unit-scale features, a logit can
only grow where the projector puts more of its variance along that finding's direction. The targets
come from each case's ``case.json`` (the generator's truth); the model's input stays the volume.
The directions are training-only: they are not part of any saved model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def finding_targets(root: Path, entries: list[dict]) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """The (kind, site) findings seen in these phantom cases, and a cases x findings 0/1 matrix."""
    from napari_med3dvlm.phantoms.findings import truth_findings

    truths = []
    for entry in entries:
        case = json.loads((Path(root) / entry["text"]).with_name("case.json").read_text(encoding="utf-8"))
        truths.append({(f.kind, f.site) for f in truth_findings(case)})
    names = sorted({name for truth in truths for name in truth}, key=lambda n: (n[0], str(n[1])))
    column = {name: i for i, name in enumerate(names)}
    targets = torch.zeros((len(truths), len(names)))
    for row, truth in enumerate(truths):
        for name in truth:
            targets[row, column[name]] = 1.0
    return names, targets


class LesionShare(nn.Module):
    """The auxiliary loss on the projector's output (see the module's docstring)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, targets: torch.Tensor, projector: nn.Module,
                 batch: int = 16, scale: float = 10.0, momentum: float = 0.01):
        super().__init__()
        self.register_buffer("low", low.float(), persistent=False)
        self.register_buffer("high", high.float(), persistent=False)
        self.register_buffer("targets", targets.float(), persistent=False)
        self.batch, self.scale, self.momentum = int(batch), float(scale), float(momentum)
        with torch.no_grad():  # the starting statistics: every case through the projector as it is
            flat = torch.cat([projector(self.low[i : i + 64], self.high[i : i + 64]).flatten(1).float()
                              for i in range(0, len(self.low), 64)])
        self.register_buffer("mean", flat.mean(0))
        self.register_buffer("rms", ((flat - flat.mean(0)) ** 2).sum(1).mean().sqrt())
        width = flat.shape[1]
        self.directions = nn.Parameter(torch.randn(targets.shape[1], width) / width ** 0.5)
        prior = targets.mean(0).clamp(1e-3, 1 - 1e-3)
        self.bias = nn.Parameter(torch.log(prior / (1 - prior)))  # starts at each finding's base rate

    def forward(self, projector: nn.Module) -> torch.Tensor:
        index = torch.randint(len(self.targets), (self.batch,), device=self.targets.device)
        flat = projector(self.low[index], self.high[index]).flatten(1).float()
        if self.training:
            with torch.no_grad():
                centred = flat - self.mean
                self.mean.lerp_(flat.mean(0), self.momentum)
                self.rms.lerp_((centred ** 2).sum(1).mean().sqrt(), self.momentum)
        z = (flat - self.mean) / self.rms  # mean squared length 1 over cases
        logits = self.scale * z @ F.normalize(self.directions, dim=1).t() + self.bias
        return F.binary_cross_entropy_with_logits(logits, self.targets[index])


def lesion_share_for(config: dict, model, stage: str) -> LesionShare:
    """The loss for ``stage`` (``projector`` or ``finetune``) over the training split's phantom cases,
    from the frozen encoder's cache (built if missing, as the stage's own data does)."""
    from ..checks import InputError
    from ..config import stage_config
    from ..data import sources
    from ..data.features import build_cache
    from ..evaluation.finding_tokens import has_truth

    stage_cfg = stage_config(config, stage)
    train = sources.caption_dataset(config, "train")
    if not has_truth(train.root, train.entries):
        raise InputError(f"{stage}: lesion_share_weight needs phantom training cases (a case.json beside each "
                         f"report) in {train.root}; set {stage}.lesion_share_weight=0 for other data "
                         f"(preset {config.get('name', '?')})")
    if any(p.requires_grad for p in model.vision_tower.parameters()):
        raise InputError(f"{stage}: lesion_share_weight reads the frozen encoder's cached tokens; it cannot be used "
                         f"with train_vision (preset {config.get('name', '?')})")
    cache = build_cache(model, [train], Path(config["output_dir"]) / "vision_cache")
    paths = [entry["image"] for entry in train.entries]
    low = torch.stack([cache[f"{p}::low"] for p in paths])
    high = torch.stack([cache[f"{p}::high"] for p in paths])
    _, targets = finding_targets(train.root, train.entries)
    return LesionShare(low, high, targets, model.mm_projector, batch=int(stage_cfg.get("lesion_share_batch", 16)))
