"""The relevance method on a model whose answer is known to depend on the lesion, and on the
shipped demo model: pointing game and energy inside the mask against a uniform map and a centre prior.

    python -m napari_med3dvlm.phantoms split --out HELDOUT --train 0 --test 200 --seed 18
    python experiments/relevance_probe.py --train-data data/phantoms --test-data HELDOUT [--minutes 8]
        [--demo-cases 60]

The probe is a tiny 3D convolutional network trained here (a few minutes, one CPU thread) to
answer "is there a focal lesion (cyst, mass, calcification, haemorrhage) in this scan?" from the
model input. Each "yes" it gives for a scan that has one is explained with
`napari_med3dvlm.inference.relevance.attribute`, the same code the docks use for the VLM (Grad-CAM
on its last stage map, gradient x input, their product), and scored on the union of the scan's
focal lesion masks. The test split's seed is not the training split's. With ``--demo-cases`` the demo model writes reports
for that many test cases and every sentence naming a focal finding correctly is scored too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_med3dvlm.inference import relevance  # noqa: E402
from napari_med3dvlm.phantoms.case import FOCAL_KINDS  # noqa: E402
from training.clock import TrainingClock  # noqa: E402
from training.evaluation import pointing  # noqa: E402

#: Sharpness of the log-sum-exp pooling of the evidence map (large: max pooling; small: mean).
POOL_R = 4.0


def targets(case: dict) -> np.ndarray:
    return np.array([any(f["kind"] in FOCAL_KINDS for f in case["findings"])], dtype=np.float32)


class Probe(nn.Module):
    """(1, 1, D, H, W) model input -> one logit "a focal lesion is present" (log-sum-exp pooling
    of an evidence map)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Conv3d(4 * width, 1, 1)

    @staticmethod
    def pool(image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(image, (1, 2, 2))  # 32x128x128 -> 32x64x64

    def from_pooled(self, pooled: torch.Tensor):
        stage = self.body(pooled)
        evidence = self.head(stage).flatten(2) * POOL_R
        pooled = (torch.logsumexp(evidence, dim=2) - np.log(evidence.shape[2])) / POOL_R
        return pooled, stage

    def forward(self, image: torch.Tensor):
        return self.from_pooled(self.pool(image))


class ProbeScore:
    """``score_fn`` for `relevance.attribute`: the probe's logit and its last stage map."""

    def __init__(self, probe: Probe):
        self.module = probe

    def __call__(self, image):
        logits, stage = self.module(image)
        return logits[0, 0], [stage]


def load_split(root: Path, split: str, limit: int | None):
    cases = pointing.split_cases(root, split, limit)
    images, ys = [], []
    for folder, case in cases:
        npy = next(folder.glob("*.npy"))
        image = torch.from_numpy(np.load(npy))[None]  # (1, 1, D, H, W)
        images.append(Probe.pool(image)[0].to(torch.float16))
        ys.append(targets(case))
    return torch.stack(images), torch.from_numpy(np.stack(ys)), cases


def train_probe(images, ys, minutes: float, seed: int = 0, batch: int = 8) -> tuple[Probe, dict]:
    torch.manual_seed(seed)
    probe = Probe()
    opt = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    pos = ys.mean(0).clamp(min=0.02)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos)
    clock, steps, seen = TrainingClock(), 0, 0  # the budget counts training only (training/clock.py)
    order = torch.randperm(len(images))
    while clock.elapsed() < minutes * 60:
        if seen + batch > len(order):
            order, seen = torch.randperm(len(images)), 0
        idx = order[seen : seen + batch]
        seen += batch
        logits, _ = probe.from_pooled(images[idx].float())
        loss = loss_fn(logits, ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 100 == 0:
            print(f"  step {steps} loss {loss.item():.3f} ({clock.elapsed():.0f} s)", flush=True)
    probe.eval()
    return probe, {"steps": steps, "minutes": round(clock.minutes(), 2), "batch": batch}


def probe_pointing(probe: Probe, cases, methods) -> tuple[dict, dict]:
    games = {m: pointing.PointingGame() for m in methods}
    tp = fp = fn = tn = 0
    for folder, case in cases:
        image, transform, labels = pointing.case_input(case, (32, 128, 128), folder=folder)
        with torch.no_grad():
            answers = (probe(image)[0][0] > 0).numpy()
        truth = targets(case) > 0
        tp += int((answers & truth).sum())
        fp += int((answers & ~truth).sum())
        fn += int((~answers & truth).sum())
        tn += int((~answers & ~truth).sum())
        if not (answers[0] and truth[0]):
            continue
        labels_model = pointing.labels_to_model(labels, transform)
        mask = np.isin(labels_model, [i + 1 for i, f in enumerate(case["findings"]) if f["kind"] in FOCAL_KINDS])
        for method in methods:
            result = relevance.attribute(ProbeScore(probe), image, method)
            games[method].add(result[0].numpy(), mask, case=case["case_id"])
    accuracy = {"true_positive": tp, "false_positive": fp, "false_negative": fn, "true_negative": tn,
                "accuracy": round((tp + tn) / max(1, tp + tn + fp + fn), 4),
                "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, tp + fn), 4)}
    return {m: g.summary() for m, g in games.items()}, accuracy


def demo_pointing(cases, count: int, methods) -> dict:
    from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, stream_report
    from napari_med3dvlm.io import read_volume

    engine = InferenceEngine(InferenceSettings(model_source="embedded", device="cpu", temperature=0.0))
    model, tokenizer = engine.load()
    reports, used = [], []
    for folder, case in cases[:count]:
        raw = next(p for p in folder.glob("*.nii.gz") if not p.name.endswith("_lesions.nii.gz"))
        volume = read_volume(raw)  # display order with its plane: the model gets the stored stack back
        volume.window = "soft tissue"
        task = stream_report(engine, volume)
        while True:
            try:
                next(task)
            except StopIteration as stop:
                reports.append(stop.value.text)
                break
        used.append((folder, case))
    from napari_med3dvlm.phantoms.findings import score_findings

    out = {"reports": len(reports), "focal_f1": score_findings(reports, [c for _, c in used])["focal"]}
    for method in methods:
        out[method] = pointing.report_pointing(model, tokenizer, reports, used, method)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-data", type=Path, required=True)
    parser.add_argument("--test-data", type=Path, required=True)
    parser.add_argument("--train-cases", type=int, default=2000)
    parser.add_argument("--test-cases", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=8.0, help="probe training budget")
    parser.add_argument("--demo-cases", type=int, default=0, help="also score the demo model's reports")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods = relevance.METHODS

    images, ys, _ = load_split(args.train_data, "train", args.train_cases)
    print(f"probe: {len(images)} training cases, {int(ys.sum())} with a focal lesion")
    probe, info = train_probe(images, ys, args.minutes)
    del images
    test = pointing.split_cases(args.test_data, "test", args.test_cases)
    results = {"probe": {"training": info}}
    results["probe"]["pointing"], results["probe"]["answers"] = probe_pointing(probe, test, methods)
    print(json.dumps(results["probe"], indent=1))
    if args.demo_cases:
        results["demo"] = demo_pointing(test, args.demo_cases, methods)
        print(json.dumps(results["demo"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
