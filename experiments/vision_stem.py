"""Which part of the demo encoder keeps it from seeing focal lesions? A controlled comparison.

    python experiments/vision_stem.py --stem published --minutes 6
    python experiments/vision_stem.py --stem gelu --minutes 6
    python experiments/vision_stem.py --stem patchify --minutes 6

Trains DCFormer-nano with the vision stage's dense loss (training/stages/vision.py) on its cached
phantom targets (run `python -m training.run vision --preset demo` once to build them) for a fixed
wall time, with the stem swapped:

* ``published``: the published stem (three one-axis k=7 / stride-4 convolutions summed, BatchNorm,
  no nonlinearity, then three k=3 decomposed convolutions);
* ``gelu``: the same convolutions with a GELU after each;
* ``patchify``: a dense 4x4x4 / stride-4 convolution (reads every voxel), BatchNorm and GELU, then
  the three k=3 decomposed convolutions with GELU.

Prints, on the test cases, the dense head's per-cell AUC and mean probability inside and outside
each focal kind's cells, and the finding-set scores of the token head. Not a benchmark: it trains
models; the numbers go into docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_med3dvlm.model.dcformer import DecomposedConv3d, PatchifyStem
from training.data.dense import DenseDataset, collate_dense
from training.stages.vision import DenseVisionModel, dense_loss, evaluate_findings

KIND_NAMES = ("cyst", "mass", "calcification", "haemorrhage", "enlargement", "effusion")


def stem(kind: str, channels: int) -> nn.Module:
    if kind == "gelu":
        return nn.Sequential(
            DecomposedConv3d(1, channels, 7, stride=4, activation=nn.GELU()),
            *[DecomposedConv3d(channels, channels, 3, activation=nn.GELU()) for _ in range(3)],
        )
    if kind == "patchify":
        return nn.Sequential(PatchifyStem(1, channels))
    raise ValueError(kind)


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Rank AUC (Mann-Whitney), no extra dependency."""
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = truth.sum()
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(score) - pos)))


@torch.no_grad()
def dense_scores(model, dataset, count=192, batch=16) -> dict:
    model.eval()
    probs, targets = [], []
    for start in range(0, min(count, len(dataset)), batch):
        b = collate_dense([dataset[i] for i in range(start, min(start + batch, count))])
        probs.append(torch.sigmoid(model(b["images"])["kind"]).numpy())
        targets.append(b["kind"].permute(0, 1, 3, 4, 2).numpy())
    model.train()
    p, t = np.concatenate(probs), np.concatenate(targets)
    out = {}
    for k, name in enumerate(KIND_NAMES):
        hit = (t[:, k] > 0.5).ravel()
        score = p[:, k].ravel()
        if hit.any():
            out[name] = {"auc": round(auc(hit, score), 3), "p_in": round(float(score[hit].mean()), 3),
                         "p_out": round(float(score[~hit].mean()), 4)}
            # Does the case hold this kind? The maximum over its cells, ranked across cases. A high per-cell
            # AUC alone can come from knowing which organs host lesions; this one needs the lesion itself.
            case_hit = t[:, k].reshape(len(t), -1).max(1) > 0.5
            if 0 < case_hit.sum() < len(case_hit):
                out[name]["case_auc"] = round(auc(case_hit, p[:, k].reshape(len(p), -1).max(1)), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stem", choices=("published", "gelu", "patchify"), default="published")
    parser.add_argument("--cache", type=Path, default=Path("runs/demo/vision_dense"))
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--balanced", action="store_true", help="per-channel balanced dense loss (vision stage option)")
    parser.add_argument("--token-weight", type=float, default=0.0, help="weight of the s3 token-kind loss")
    parser.add_argument("--case-weight", type=float, default=0.0, help="weight of the case-level max (MIL) loss")
    parser.add_argument("--out", type=Path, help="also save the trained model (safetensors) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    open_cache = lambda split: DenseDataset({k: np.load(args.cache / split / f"{k}.npy", mmap_mode="r")  # noqa: E731
                                             for k in ("image", "kind", "organ", "labels")})
    train, test = open_cache("train"), open_cache("test")
    model = DenseVisionModel("nano", tuple(train.arrays["image"].shape[1:]), layer_scale_init=0.1)
    if args.stem != "published":
        model.encoder.encoder.s0 = stem(args.stem, model.encoder.hidden_sizes[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()
    start, step = time.monotonic(), 0
    model.train()
    while time.monotonic() - start < args.minutes * 60:
        idx = [order[(step * args.batch + i) % len(order)] for i in range(args.batch)]
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 50)
        loss, _ = dense_loss(model, collate_dense([train[i] for i in idx]), balanced=args.balanced,
                             token_weight=args.token_weight, case_weight=args.case_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    if args.out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    result = {"stem": args.stem, "balanced": args.balanced, "case_weight": args.case_weight, "minutes": args.minutes, "steps": step, "cases_seen": step * args.batch,
              "dense_test": dense_scores(model, test), "findings_test": evaluate_findings(model, test)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
