"""The reference's training augmentations, in plain torch and with an explicit generator.

Order and probabilities follow Med3DVLM (docs/reference-model.md, "Preprocessing"): in-plane RandRotate90 (p=0.5), a
flip per axis (p=0.1 each), intensity scale and shift by up to 10 % (p=0.5 each).

Geometry changes what the text means: a left-right flip turns "left kidney" into the right one and a
90-degree in-plane rotation swaps left-right with front-back. The reference applies them anyway to
real reports; the demo preset keeps only the intensity augmentations, whose effect no question or
report talks about. Each sample draws from its own generator seeded by (seed, epoch, index), so a
resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class AugmentConfig:
    rotate90_prob: float = 0.5
    flip_prob: float = 0.1
    scale_prob: float = 0.5
    scale_factor: float = 0.1
    shift_prob: float = 0.5
    shift_offset: float = 0.1

    @classmethod
    def from_dict(cls, values: dict | None) -> "AugmentConfig | None":
        """None or ``{"enabled": false}`` turns augmentation off."""
        if values is None or not values.get("enabled", True):
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def augment_volume(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment one (C, D, H, W) volume in [0, 1]; axes 1..3 are depth, height, width."""

    def chance(p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=generator)) < p

    def uniform(half_width: float) -> float:
        return (float(torch.rand((), generator=generator)) * 2.0 - 1.0) * half_width

    if chance(cfg.rotate90_prob):
        quarter_turns = int(torch.randint(0, 4, (), generator=generator))
        image = torch.rot90(image, quarter_turns, dims=(2, 3))
    for axis in (1, 2, 3):
        if chance(cfg.flip_prob):
            image = torch.flip(image, dims=(axis,))
    if chance(cfg.scale_prob):
        image = image * (1.0 + uniform(cfg.scale_factor))
    if chance(cfg.shift_prob):
        image = image + uniform(cfg.shift_offset)
    return image.contiguous()


class AugmentedDataset(Dataset):
    """Wraps a dataset of dicts with an ``"image"`` tensor and augments that image reproducibly."""

    def __init__(self, base: Dataset, cfg: AugmentConfig | None, seed: int = 0):
        self.base = base
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        item = self.base[index]
        if self.cfg is None:
            return item
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        item = dict(item)
        item["image"] = augment_volume(torch.as_tensor(item["image"]), self.cfg, generator)
        return item
