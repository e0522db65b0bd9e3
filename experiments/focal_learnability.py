"""How fast can a 3D network learn to *see* focal phantom lesions on two CPU cores, and what limits it?

    python experiments/focal_learnability.py --arch plain --minutes 8
    python experiments/focal_learnability.py --arch patchify --minutes 8
    python experiments/focal_learnability.py --arch patchify --crop 64 --minutes 8

Trains a network on the vision stage's cached dense phantom targets (training/data/dense.py; build
them once with `python -m training.run vision --preset demo`) with only the located lesion signal:
the stage's dense loss on the stride-8 kind map plus the case-level max loss (training/vision/losses.py;
model and metrics from training/vision/ too). Its own sampling loop draws cases with replacement,
crops and downsamples, which the stage's loop does not. Every ``--eval-every`` minutes it prints the test cases' case-level
focal AUC (each focal kind: the head's maximum over a case's cells, ranked across the 200 whole test
volumes; 0.5 is chance) with minutes and cases seen, one JSON line per evaluation.

* ``--arch plain``: a plain CNN (3x3x3 convolutions, BatchNorm, ReLU; stride 8), a learnability
  reference with no DCFormer part;
* ``--arch published`` / ``patchify``: DCFormer-nano with that stem and the vision stage's dense head;
* ``--crop N``: train on N x N in-plane crops (full depth) centred on a focal lesion or on a voxel of
  an organ that can host one, half and half; evaluation is always on whole volumes (the networks are
  fully convolutional).

Not a benchmark: it trains models; the numbers go into docs/training.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_med3dvlm.phantoms.anatomy import LABEL
from napari_med3dvlm.phantoms.case import FOCAL_KINDS, KINDS
from training.clock import TrainingClock
from training.data.dense import NUM_KINDS, DenseDataset, cell_targets
from training.vision.losses import case_max_bce, dense_kind_loss, focal_host_labels, host_cells
from training.vision.metrics import FOCAL_INDEX, focal_case_aucs, rank_auc
from training.vision.model import DenseVisionModel


class PlainCNN(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return [nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm3d(cout), nn.ReLU()]

        self.body = nn.Sequential(*block(1, width // 2, 1), *block(width // 2, width, 2), *block(width, 2 * width, 2),
                                  *block(2 * width, 2 * width, 2), nn.Conv3d(2 * width, NUM_KINDS, 1))

    def forward(self, images):
        # (B, 1, D, H, W) -> kind logits depth-last (B, K, H, W, D), as the vision stage's heads give them
        return {"kind": self.body(images).permute(0, 1, 3, 4, 2)}


class DenseOnly(DenseVisionModel):
    """The vision stage's model with only its dense head evaluated (the set heads need a fixed input size)."""

    def forward(self, images):
        return {"kind": self.kind_logits(images)}


class Downsampled(DenseDataset):
    """Items at 1/``factor`` of the model resolution on every axis (mean of each block of voxels), with the
    dense targets on the stride-8 grid of that smaller input."""

    def __init__(self, arrays, factor: int):
        super().__init__(arrays, cell=4 * factor)
        self.factor = factor

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["images"] = nn.functional.avg_pool3d(item["images"][None], self.factor)[0]
        return item


def open_split(root: Path, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    arrays = {k: np.load(root / split / f"{k}.npy", mmap_mode="r") for k in ("image", "kind", "organ", "labels")}
    if limit:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    return arrays


def crop_item(arrays, index: int, size: int, rng: np.random.Generator):
    """(image (1, D, size, size), kind presence (K, d, h, w)) of one crop aligned to the stride-8 grid."""
    kind, organ = np.asarray(arrays["kind"][index]), np.asarray(arrays["organ"][index])
    focal = np.isin(kind, [KINDS.index(k) + 1 for k in FOCAL_KINDS])
    where = np.argwhere(focal) if focal.any() and rng.random() < 0.5 else np.argwhere(np.isin(organ, focal_host_labels().numpy()))
    if len(where) == 0:
        where = np.argwhere(np.ones_like(organ, bool))
    _, cy, cx = where[rng.integers(len(where))]
    half = size // 2  # label maps are at half resolution: a crop of `size` voxels is size // 2 label cells
    h, w = kind.shape[1:]
    y0 = int(np.clip(cy - half // 2, 0, h - half)) // 4 * 4
    x0 = int(np.clip(cx - half // 2, 0, w - half)) // 4 * 4
    presence, _ = cell_targets(kind[:, y0:y0 + half, x0:x0 + half], organ[:, y0:y0 + half, x0:x0 + half], 4)
    image = np.asarray(arrays["image"][index, :, 2 * y0:2 * y0 + size, 2 * x0:2 * x0 + size], np.float32) / 255.0
    return torch.from_numpy(image)[None], torch.from_numpy(presence)


@torch.no_grad()
def case_auc(model, test: DenseDataset, batch: int = 20) -> dict[str, float]:
    model.eval()
    scores, truth, cell_scores, cell_truth = [], [], [], []
    focal = FOCAL_INDEX
    for start in range(0, len(test), batch):
        items = [test[i] for i in range(start, min(start + batch, len(test)))]
        out = model(torch.stack([it["images"] for it in items]))["kind"]
        target = torch.stack([it["kind"] for it in items]).permute(0, 1, 3, 4, 2)
        scores.append(out.flatten(2).amax(2).numpy())
        truth.append(torch.stack([it["case_kinds"] for it in items]).numpy() > 0.5)
        # cells of a host organ: lesion (any focal kind) against parenchyma, whatever the rest of the volume does
        host = host_cells(torch.stack([it["organ"] for it in items]))[:, 0]
        lesion = target[:, focal].amax(1) > 0.2
        keep = host | lesion
        cell_scores.append(out[:, focal].amax(1)[keep].numpy())
        cell_truth.append(lesion[keep].numpy())
    model.train()
    s, t = np.concatenate(scores), np.concatenate(truth)
    out = {kind: round(auc, 3) for kind, auc in focal_case_aucs(t, s).items()}
    out["mean"] = round(float(np.mean(list(out.values()))), 3)
    # detection without the kind: does the case hold any focal lesion, scored by the highest focal channel
    out["any"] = round(rank_auc(t[:, focal].any(1), s[:, focal].max(1)), 3)
    out["lesion_vs_parenchyma_cells"] = round(rank_auc(np.concatenate(cell_truth), np.concatenate(cell_scores)), 3)
    return out


@torch.no_grad()
def where_max(model, test: DenseDataset, batch: int = 20) -> dict:
    """Where the case-level maximum lands: for each focal kind, in cases with the kind the share whose
    maximum cell holds it, and in cases without it the organs of the maximum cells (the look-alikes)."""
    names = {v: k for k, v in LABEL.items()}
    names[0] = "outside"
    model.eval()
    out = {kind: {"hit": [], "negatives": {}} for kind in FOCAL_KINDS}
    for start in range(0, len(test), batch):
        items = [test[i] for i in range(start, min(start + batch, len(test)))]
        logits = model(torch.stack([it["images"] for it in items]))["kind"].permute(0, 1, 4, 2, 3)  # (B, K, d, h, w)
        for b, item in enumerate(items):
            for kind in FOCAL_KINDS:
                k = KINDS.index(kind)
                cell = np.unravel_index(int(logits[b, k].argmax()), logits.shape[2:])
                if item["case_kinds"][k] > 0.5:
                    out[kind]["hit"].append(bool(item["kind"][k][cell] > 0.2))
                else:
                    organ = names.get(int(item["organ"][cell]), "?")
                    out[kind]["negatives"][organ] = out[kind]["negatives"].get(organ, 0) + 1
    model.train()
    return {kind: {"positives_max_in_lesion": round(float(np.mean(v["hit"])), 3) if v["hit"] else None,
                   "negatives_max_in": dict(sorted(v["negatives"].items(), key=lambda x: -x[1]))}
            for kind, v in out.items()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=("plain", "published", "patchify"), default="plain")
    parser.add_argument("--cache", type=Path, default=Path("runs/demo/vision_dense"))
    parser.add_argument("--train-cache", type=Path, help="train split from this cache folder (default: --cache)")
    parser.add_argument("--train-cases", type=int, default=None)
    parser.add_argument("--crop", type=int, default=0, help="in-plane crop size in voxels (0: whole volumes)")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--eval-every", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="save the trained weights (safetensors) here")
    parser.add_argument("--downsample", type=int, default=1,
                        help="train and evaluate at 1/N of the model resolution (block means)")
    parser.add_argument("--loss", choices=("balanced", "host"), default="balanced",
                        help="dense loss: per-channel balanced, or with host-organ negatives as their own group")
    parser.add_argument("--init", type=Path, help="start from these weights (safetensors, e.g. an --out of a smaller input)")
    parser.add_argument("--where", action="store_true", help="at the end, print where the case-level maximum lands")
    args = parser.parse_args(argv)
    if args.crop and (args.loss == "host" or args.downsample > 1):
        parser.error("--loss host and --downsample need whole volumes")
    return args


def build_model(args, size: tuple[int, int, int]) -> nn.Module:
    if args.arch == "plain":
        model = PlainCNN()
    else:
        model = DenseOnly("nano", size, layer_scale_init=0.1, stem="decomposed" if args.arch == "published" else args.arch)
    if args.init:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(args.init)))
    return model


def draw_batch(args, train, whole: DenseDataset, rng: np.random.Generator):
    """(images, dense target depth-last, organ map or None, case target) of ``--batch`` cases drawn with
    replacement: crops or whole (possibly downsampled) volumes."""
    idx = rng.integers(len(train["labels"]), size=args.batch)
    if args.crop:
        pairs = [crop_item(train, int(i), args.crop, rng) for i in idx]
        images, target = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        organ = None  # crops train the balanced loss only (checked in parse_args)
        case_target = (target.flatten(2).amax(2) > 0).float()  # what the crop shows
    else:
        items = [whole[int(i)] for i in idx]
        images, target = torch.stack([it["images"] for it in items]), torch.stack([it["kind"] for it in items])
        organ = torch.stack([it["organ"] for it in items])
        case_target = torch.stack([it["case_kinds"] for it in items])
    return images, target.permute(0, 1, 3, 4, 2), organ, case_target


def train_step(model, optimizer, args, step: int, batch) -> None:
    images, target, organ, case_target = batch
    for group in optimizer.param_groups:
        group["lr"] = args.lr * min(1.0, (step + 1) / 50)
    logits = model(images)["kind"].float()
    dense_loss = "host-balanced" if args.loss == "host" else "balanced"
    loss = dense_kind_loss(logits, target, organ, dense_loss) + case_max_bce(logits, case_target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train = open_split(args.train_cache or args.cache, "train", args.train_cases)
    f = args.downsample
    test = Downsampled(open_split(args.cache, "test"), f) if f > 1 else DenseDataset(open_split(args.cache, "test"))
    model = build_model(args, tuple(n // f for n in train["image"].shape[1:]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    whole = Downsampled(train, f) if f > 1 else DenseDataset(train)
    clock, step = TrainingClock(), 0  # the budget counts training only (training/clock.py)
    next_eval = 0.0 if args.init else args.eval_every * 60  # a started model is scored before it trains
    model.train()
    while True:
        elapsed = clock.elapsed()
        if elapsed >= next_eval or elapsed >= args.minutes * 60:
            with clock.paused():
                print(json.dumps({"arch": args.arch, "crop": args.crop, "step": step, "cases": step * args.batch,
                                  "train_minutes": round(clock.minutes(), 2), "case_auc": case_auc(model, test)}),
                      flush=True)
            next_eval += args.eval_every * 60
            if elapsed >= args.minutes * 60:
                break
        train_step(model, optimizer, args, step, draw_batch(args, train, whole, rng))
        step += 1
    if args.where:
        print(json.dumps({"where_max": where_max(model, test)}), flush=True)
    if args.out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))


if __name__ == "__main__":
    main()
