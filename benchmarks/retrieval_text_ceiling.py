"""How far can a frozen text encoder take phantom retrieval? A ceiling with a perfect image side.

    python benchmarks/retrieval_text_ceiling.py --data data/phantoms [--preset demo]

The image side is replaced by an oracle: a learned embedding of each case's ground truth (region,
phase, plane, and every finding's kind, site, count, severity and size from case.json). It is trained
against the preset's text side exactly as the SigLIP stage trains (frozen encoder, pooled once, a
linear projection, sigmoid loss, batch 32), on the training split; then text -> case R@1/5/10 is
measured on the test split. Whatever a vision encoder learns, text -> volume R@1 with this text side
cannot be expected above this number, so it tells whether a target is reachable by image training
alone. Prints the ceiling beside the chance level of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import load_preset
from training.data.instructions import pool_texts
from training.data.m3d import CaptionDataset
from training.stages.siglip import build_siglip


def case_attributes(case: dict) -> list[tuple]:
    items = [("region", case["region"]), ("phase", case["phase"]), ("plane", case["plane"])]
    for f in case["findings"]:
        site = (f["kind"], f["site"])
        items += [("finding", *site), ("count", *site, f["count"]), ("severity", *site, f["severity"]),
                  ("size", *site, f["size_cm"])]
    return items


def load_split(root: Path, split: str):
    dataset = CaptionDataset(str(root), str(root / "M3D_Cap.json"), split=split)
    cases = []
    for entry in dataset.entries:
        cases.append(json.loads((root / entry["text"]).with_name("case.json").read_text(encoding="utf-8")))
    return cases, [dataset.text(i) for i in range(len(dataset))]


def recall(text_emb: torch.Tensor, case_emb: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    sims = text_emb @ case_emb.T
    own = sims.diagonal()[:, None]
    ranks = (sims > own).sum(dim=1)
    return {k: (ranks < k).float().mean().item() for k in ks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = load_preset(args.preset)
    model, tokenizer = build_siglip(config)
    model.eval()
    torch.manual_seed(args.seed)  # after build_siglip, which seeds the vision tower's init
    train_cases, train_texts = load_split(args.data, "train")
    test_cases, test_texts = load_split(args.data, "test")
    start = time.perf_counter()
    with torch.no_grad():
        table = pool_texts(model, tokenizer, train_texts + test_texts, int(config["model"].get("text_max_length", 512)))
    print(f"{len(table)} reports pooled by {config['model']['text_encoder']} in {time.perf_counter() - start:.0f} s")

    vocab: dict[tuple, int] = {}
    for case in train_cases + test_cases:
        for item in case_attributes(case):
            vocab.setdefault(item, len(vocab))

    def one_hot(cases):
        out = torch.zeros(len(cases), len(vocab))
        for row, case in enumerate(cases):
            out[row, [vocab[item] for item in case_attributes(case)]] = 1.0
        return out

    x_train, x_test = one_hot(train_cases), one_hot(test_cases)
    t_train = torch.stack([table[t] for t in train_texts])
    t_test = torch.stack([table[t] for t in test_texts])
    oracle = torch.nn.Linear(len(vocab), model.mm_language_proj.out_features)
    text_head = torch.nn.Linear(t_train.shape[1], model.mm_language_proj.out_features)
    t_prime = torch.tensor(float(config["model"].get("t_prime", 2.659)), requires_grad=True)
    bias = torch.tensor(float(config["model"].get("bias", 0.0)), requires_grad=True)
    params = [*oracle.parameters(), *text_head.parameters(), t_prime, bias]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    batch = 32
    labels = 2 * torch.eye(batch) - 1
    for _ in range(args.steps):
        idx = torch.randint(0, len(x_train), (batch,))
        image = F.normalize(oracle(x_train[idx]), dim=-1)
        text = F.normalize(text_head(t_train[idx]), dim=-1)
        logits = image @ text.T * t_prime.exp() + bias
        loss = -F.logsigmoid(labels * logits).sum() / batch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        r = recall(F.normalize(text_head(t_test), dim=-1), F.normalize(oracle(x_test), dim=-1))
    n = len(test_cases)
    for k, value in r.items():
        print(f"text -> case R@{k:<2} with a perfect image side: {value:6.1%}   (chance {min(1.0, k / n):6.1%}, N={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
