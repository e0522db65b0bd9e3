"""What does a SigLIP vision encoder read? Findings probes on phantom cases, stage by stage.

    python experiments/retrieval_vision_probe.py --data data/phantoms [--model embedded]
    python experiments/retrieval_vision_probe.py --data data/phantoms --tune-from 2 --extra-train 10000

Retrieval among 200 phantoms at R@1 >= 0.90 needs each volume's findings (kind and site) to be told
apart; region, phase and plane alone give about 0.2. This benchmark asks how much of that the image
side carries, with ground truth (case.json) the retrieval training never sees:

* linear probes (one logistic regression per finding label, on the frozen features of each DCFormer
  stage): the share of test cases whose whole set of findings is read exactly;
* with ``--tune-from K``: stages sK..s4 trained *supervised* on the findings on top of the frozen
  maps of the stages before them, the most direct signal those stages can get; ``--extra-train N``
  renders N more training phantoms in memory (same generator, next seeds) to see whether data helps.

If even supervised training reads findings for few test cases, no contrastive recipe at the same
compute will, so the retrieval target needs a differently trained encoder, not a better text side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_med3dvlm.model.dcformer import feature_map_to_tokens
from napari_med3dvlm.model.loading import load_siglip
from training.clock import TrainingClock


def finding_labels(case: dict) -> set:
    return {(f["kind"], f["site"]) for f in case["findings"]}


def load_split(data: Path, split: str):
    entries = json.loads((data / "M3D_Cap.json").read_text(encoding="utf-8"))[split]
    volumes = [torch.from_numpy(np.load(data / e["image"])) for e in entries]
    cases = [json.loads((data / e["text"]).with_name("case.json").read_text(encoding="utf-8")) for e in entries]
    return volumes, cases


def _render(index: int):
    from napari_med3dvlm.io import preprocess_volume
    from napari_med3dvlm.phantoms.generator import render_case
    from napari_med3dvlm.phantoms.sampling import sample_case
    from napari_med3dvlm.phantoms.writers import case_seed

    torch.set_num_threads(1)
    case = sample_case(case_seed(0, "train", index), case_id=f"train_{index:05d}")
    tensor, _ = preprocess_volume(render_case(case).stack, "CT", window="soft tissue", spatial_size=(32, 128, 128))
    return tensor[0].to(torch.float16), case.to_dict()


def rendered_cases(start: int, count: int, workers: int = 2):
    """Training phantoms ``start..start+count`` rendered in memory (the split writer's seeds)."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_render, range(start, start + count), chunksize=8)


@torch.no_grad()
def stage_maps(encoder, volumes, upto: int, batch: int = 32):
    """Depth-last maps after stage ``upto`` (bf16, to keep 10k+ cases in memory)."""
    out = []
    for start in range(0, len(volumes), batch):
        h = torch.stack(volumes[start : start + batch]).float().permute(0, 1, 3, 4, 2)
        for s in range(upto + 1):
            h = getattr(encoder, f"s{s}")(h)
        out.append(h.to(torch.bfloat16))
    return torch.cat(out)


def exact_match(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return ((logits > 0) == (targets > 0)).all(dim=1).float().mean().item()


def linear_probe(x_train, y_train, x_test, y_test, steps: int = 300, weight_decay: float = 1e-3) -> float:
    """Per-label logistic regressions (one linear layer, full-batch L-BFGS) on standardised features."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    layer = torch.nn.Linear(x_train.shape[1], y_train.shape[1])
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(layer(x_train), y_train) + weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return exact_match(layer(x_test), y_test)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--model", default="embedded", help="SigLIP folder, or 'embedded' for the demo model")
    parser.add_argument("--tune-from", type=int, default=None, help="train stages K..4 supervised (K in 1..4)")
    parser.add_argument("--extra-train", type=int, default=0, help="more training phantoms, rendered in memory")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)

    model, _ = load_siglip(None if args.model == "embedded" else args.model)
    model.eval()
    start = time.perf_counter()
    train_volumes, train_cases = load_split(args.data, "train")
    test_volumes, test_cases = load_split(args.data, "test")
    vocab = sorted(set().union(*(finding_labels(c) for c in train_cases)))

    def targets(cases):
        return torch.tensor([[label in finding_labels(c) for label in vocab] for c in cases], dtype=torch.float32)

    y_test = targets(test_cases)
    none = (y_test.sum(1) == 0).float().mean().item()
    print(f"{len(train_cases)} train / {len(test_cases)} test cases, {len(vocab)} finding labels (kind, site); "
          f"'no finding' for every case reads {none:.1%} of the test cases exactly")

    if args.tune_from is None:
        maps_train, maps_test = _all_stages(model, train_volumes), _all_stages(model, test_volumes)
        print(f"features in {time.perf_counter() - start:.0f} s")
        probe_stages(maps_train, targets(train_cases), maps_test, y_test)
        return 0

    k = args.tune_from
    maps_train, train_cases = frozen_maps(model.vision_encoder.encoder, train_volumes, train_cases, k - 1, args.extra_train)
    maps_test = stage_maps(model.vision_encoder.encoder, test_volumes, k - 1)
    print(f"frozen s0..s{k - 1} maps of {len(train_cases)} training cases in {time.perf_counter() - start:.0f} s")
    tune_stages(model, k, (maps_train, targets(train_cases)), (maps_test, y_test), args)
    return 0


def probe_stages(maps_train, y_train, maps_test, y_test) -> None:
    """Linear probes on the frozen s2..s4 features, mean-pooled and all tokens."""
    for s in range(2, 5):
        pooled = linear_probe(maps_train[s].mean(1), y_train, maps_test[s].mean(1), y_test)
        flat = linear_probe(maps_train[s].flatten(1), y_train, maps_test[s].flatten(1), y_test)
        print(f"stage s{s}: linear probe, test cases with every finding read: "
              f"{pooled:6.1%} (mean-pooled, {maps_train[s].shape[2]}-d)   {flat:6.1%} (all tokens, "
              f"{maps_train[s][0].numel()}-d)")


def frozen_maps(encoder, volumes, cases, upto: int, extra_train: int):
    """Maps after stage ``upto`` of the split's volumes, then of ``extra_train`` phantoms rendered in
    memory (in chunks of 256); with the cases they belong to."""
    maps = stage_maps(encoder, volumes, upto)
    extra, extra_cases = [], []
    for tensor, case in (rendered_cases(len(cases), extra_train) if extra_train else ()):
        extra.append(tensor.float())
        extra_cases.append(case)
        if len(extra) == 256:
            maps = torch.cat([maps, stage_maps(encoder, extra, upto)])
            extra.clear()
    if extra:
        maps = torch.cat([maps, stage_maps(encoder, extra, upto)])
    return maps, cases + extra_cases


def tune_stages(model, k: int, train, test, args) -> None:
    """Stages sK..s4 and a linear head trained supervised on the findings (batch 32), scored every 500
    steps; the seconds printed are training seconds (training/clock.py: scoring does not count)."""
    encoder = model.vision_encoder.encoder
    (maps_train, y_train), (maps_test, y_test) = train, test
    stages = [getattr(encoder, f"s{s}") for s in range(k, 5)]
    head = torch.nn.Linear(encoder_width(model), y_train.shape[1])
    params = [p for s in stages for p in s.parameters()] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr)

    def forward(maps, train: bool):
        for s in stages:
            s.train(train)
        h = maps.float()
        for s in stages:
            h = s(h)
        return head(feature_map_to_tokens(h).mean(1))

    clock = TrainingClock()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(maps_train), (32,))
        loss = F.binary_cross_entropy_with_logits(forward(maps_train[idx], True), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0 or step == args.steps:
            with clock.paused(), torch.no_grad():
                test = exact_match(torch.cat([forward(maps_test[i : i + 50], False) for i in range(0, len(maps_test), 50)]), y_test)
                seen = exact_match(forward(maps_train[:200], False), y_train[:200])
                print(f"step {step:5d} ({clock.elapsed():4.0f} s): s{k}..s4 supervised on findings, "
                      f"every finding read on {seen:6.1%} of 200 training / {test:6.1%} of test cases")


def encoder_width(model) -> int:
    return model.vision_encoder.hidden_sizes[-1]


@torch.no_grad()
def _all_stages(model, volumes, batch: int = 32):
    outs = []
    for start in range(0, len(volumes), batch):
        outs.append(model.vision_encoder(torch.stack(volumes[start : start + batch]).float())[2:])
    return [None, None] + [torch.cat([o[s] for o in outs]) for s in range(3)]  # s2..s4 only


if __name__ == "__main__":
    sys.exit(main())
