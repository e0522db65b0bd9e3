"""Which part of the demo encoder keeps it from seeing focal lesions? A controlled comparison.

    python experiments/vision_stem.py --stem published --minutes 6
    python experiments/vision_stem.py --stem gelu --minutes 6
    python experiments/vision_stem.py --stem patchify --minutes 6

Trains DCFormer-nano with the vision stage's model, loss and loop (`training.vision`,
`training.loop.train`: the cosine schedule fitted to ``--minutes``) on its cached phantom targets (run
`python -m training.run vision --preset demo` once to build them), with the stem swapped:

* ``published``: the published stem (three one-axis k=7 / stride-4 convolutions summed, BatchNorm,
  no nonlinearity, then three k=3 decomposed convolutions);
* ``gelu``: the same convolutions with a GELU after each (this experiment's own variant);
* ``patchify``: DCFormer's ``patchify`` stem (a dense 4x4x4 / stride-4 convolution, BatchNorm and
  GELU, then the three k=3 decomposed convolutions with GELU), what ``model.vision_stem`` selects.

Prints, on the test cases, the dense head's per-cell AUC and mean probability inside and outside
each focal kind's cells, the case-level AUC (truth from the case's findings) and the finding-set
scores of the token head. Not a benchmark: it trains models; the numbers go into docs/training.md
(its first table was measured with an earlier loop and loss: plain positive-weighted dense BCE).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_med3dvlm.model.dcformer import DecomposedConv3d
from napari_med3dvlm.phantoms.case import KINDS
from training.data.dense import DenseDataset, collate_dense
from training.loop import LoopConfig, train
from training.vision.losses import DENSE_LOSSES, vision_loss
from training.vision.metrics import evaluate_findings, rank_auc
from training.vision.model import DenseVisionModel


def gelu_stem(channels: int) -> nn.Module:
    return nn.Sequential(
        DecomposedConv3d(1, channels, 7, stride=4, activation=nn.GELU()),
        *[DecomposedConv3d(channels, channels, 3, activation=nn.GELU()) for _ in range(3)],
    )


@torch.no_grad()
def dense_scores(model, dataset, count=192, batch=16) -> dict:
    model.eval()
    probs, targets, case_truth = [], [], []
    count = min(count, len(dataset))
    for start in range(0, count, batch):
        b = collate_dense([dataset[i] for i in range(start, min(start + batch, count))])
        probs.append(torch.sigmoid(model(b["images"])["kind"]).numpy())
        targets.append(b["kind"].permute(0, 1, 3, 4, 2).numpy())
        case_truth.append(b["case_kinds"].numpy() > 0.5)
    model.train()
    p, t, cases = np.concatenate(probs), np.concatenate(targets), np.concatenate(case_truth)
    out = {}
    for k, name in enumerate(KINDS):
        hit = (t[:, k] > 0.5).ravel()
        score = p[:, k].ravel()
        if hit.any():
            out[name] = {"auc": round(rank_auc(hit, score), 3), "p_in": round(float(score[hit].mean()), 3),
                         "p_out": round(float(score[~hit].mean()), 4)}
            # Does the case hold this kind (its findings say so)? The maximum over its cells, ranked
            # across cases: a high per-cell AUC alone can come from knowing which organs host lesions.
            if 0 < cases[:, k].sum() < len(cases):
                out[name]["case_auc"] = round(rank_auc(cases[:, k], p[:, k].reshape(len(p), -1).max(1)), 3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stem", choices=("published", "gelu", "patchify"), default="published")
    parser.add_argument("--cache", type=Path, default=Path("runs/demo/vision_dense"))
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-loss", choices=DENSE_LOSSES, default="balanced", help="the vision stage's loss choice")
    parser.add_argument("--out", type=Path, help="also save the trained model (safetensors) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    open_cache = lambda split: DenseDataset({k: np.load(args.cache / split / f"{k}.npy", mmap_mode="r")  # noqa: E731
                                             for k in ("image", "kind", "organ", "labels")})
    train_set, test = open_cache("train"), open_cache("test")
    torch.manual_seed(args.seed)
    model = DenseVisionModel("nano", tuple(train_set.arrays["image"].shape[1:]), layer_scale_init=0.1,
                             stem="patchify" if args.stem == "patchify" else "decomposed")
    if args.stem == "gelu":
        model.encoder.encoder.s0 = gelu_stem(model.encoder.hidden_sizes[0])
    cfg = LoopConfig(epochs=1000, batch_size=args.batch, lr=args.lr, weight_decay=0.05, max_minutes=args.minutes,
                     seed=args.seed, save_every=10**9, log_every=10**9)
    with tempfile.TemporaryDirectory() as work:
        model, state, _ = train(name=f"stem-{args.stem}", model=model, dataset=train_set, collate_fn=collate_dense,
                                compute_loss=lambda m, b: vision_loss(m, b, args.dense_loss), cfg=cfg,
                                output_dir=Path(work))
    if args.out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    result = {"stem": args.stem, "dense_loss": args.dense_loss, "minutes": args.minutes, "steps": state.global_step,
              "cases_seen": state.global_step * args.batch,
              "dense_test": dense_scores(model, test), "findings_test": evaluate_findings(model, test)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
