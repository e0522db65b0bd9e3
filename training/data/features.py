"""Cache the frozen image encoder's output so LLM stages do not re-run 3D convolutions.

When DCFormer is frozen (projector stage; finetune without ``train_vision``), its stage-3/stage-4
tokens depend only on the volume. Each M3D image is asked for many times (one report and a dozen
questions per case), so the LLM stages encode every volume once, up front, in fp32 (3D convolutions
do not get faster under CPU bf16 autocast, the LLM does). The cache is keyed by image path and by a
fingerprint of the encoder weights, so a different encoder never reads stale features. Trade-off:
image augmentation cannot apply to cached features; the demo only augments in the SigLIP stage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .m3d import load_image


def encoder_fingerprint(encoder: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _paths_of(dataset: Dataset) -> list[str]:
    if hasattr(dataset, "entries"):
        return [entry["image"] for entry in dataset.entries]
    if hasattr(dataset, "rows"):
        return [row["Image Path"] for row in dataset.rows]
    raise TypeError(f"cannot list the images of {type(dataset).__name__}")


@torch.no_grad()
def build_cache(model, datasets: list[Dataset], cache_dir: Path, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{image path: (low tokens, high tokens)}`` for every image of ``datasets``, computed once."""
    vision = model.vision_tower
    cache_dir = Path(cache_dir)
    cache_file = cache_dir / f"vision-{encoder_fingerprint(vision)}.safetensors"
    cached = load_file(str(cache_file)) if cache_file.exists() else {}
    roots = {}
    for dataset in datasets:
        for path in _paths_of(dataset):
            roots.setdefault(path, dataset.root)
    todo = [p for p in roots if f"{p}::low" not in cached]
    if todo:
        was_training = vision.training
        vision.eval()
        for start in tqdm(range(0, len(todo), batch_size), desc="encoding volumes", dynamic_ncols=True):
            chunk = todo[start : start + batch_size]
            images = torch.stack([load_image(Path(roots[p]) / p) for p in chunk])
            with torch.autocast("cpu", enabled=False):
                low, high = model.select_image_tokens(vision(images.float()))
            for i, path in enumerate(chunk):
                cached[f"{path}::low"] = low[i].contiguous().clone()
                cached[f"{path}::high"] = high[i].contiguous().clone()
        vision.train(was_training)
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_file(cached, str(cache_file))
    return cached


class CachedImageDataset(Dataset):
    """An M3D dataset whose items carry cached encoder tokens instead of the volume (never read)."""

    def __init__(self, base: Dataset, cache: dict[str, torch.Tensor]):
        self.base = base
        self.cache = cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        if hasattr(self.base, "record"):
            item = self.base.record(index)
        else:
            item = {"text": self.base.text(index), "image_path": self.base.entries[index]["image"]}
        path = item["image_path"]
        item["vision_low"] = self.cache[f"{path}::low"]
        item["vision_high"] = self.cache[f"{path}::high"]
        return item
