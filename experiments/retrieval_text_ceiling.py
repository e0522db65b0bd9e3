"""How far can a frozen text encoder take phantom retrieval? A ceiling with a perfect image side.

    python experiments/retrieval_text_ceiling.py --data data/phantoms [--preset demo] [--text-trainable lora]

The image side is replaced by an oracle: a learned embedding of each case's ground truth (region,
phase, plane, and every finding's kind, site, count, severity and size from case.json). It is trained
against the preset's text side exactly as the SigLIP stage trains (frozen encoder, pooled once, a
linear projection, sigmoid loss, batch 32), on the training split; then text -> case R@1/5/10 is
measured on the test split. ``--text-trainable lora`` also trains LoRA adapters in the text encoder
(the encoder then runs every step instead of being pooled once).

``--image-side embedded`` swaps the oracle for the shipped demo model's real, frozen image tower
(embeddings of the split's volumes) and starts the text side from the shipped one: how much tuning
the text side alone (LiT-style) gains for retrieval with the image tower we have. Whatever a vision encoder learns, text -> volume R@1 with this text side
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

from training.clock import TrainingClock
from training.config import load_preset
from training.data.instructions import pool_texts
from training.data.m3d import CaptionDataset
from training.stages.siglip import build_siglip, set_text_trainable


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


def pooled_all(pooled, texts, batch: int = 64) -> torch.Tensor:
    return torch.cat([pooled(texts[i : i + batch]) for i in range(0, len(texts), batch)])


@torch.no_grad()
def image_embeddings(model, root: Path, split: str, batch: int = 32) -> torch.Tensor:
    """Normalised SigLIP image embeddings of a split's preprocessed volumes (the .npy files)."""
    import numpy as np

    entries = json.loads((root / "M3D_Cap.json").read_text(encoding="utf-8"))[split]
    out = []
    for start in range(0, len(entries), batch):
        volumes = np.stack([np.load(root / e["image"]) for e in entries[start : start + batch]])
        out.append(model.encode_image(torch.from_numpy(volumes).float()))
    return torch.cat(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-trainable", choices=("head", "lora"), default="head")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-side", choices=("oracle", "embedded"), default="oracle")
    parser.add_argument("--model", default=None,
                        help="with --image-side embedded: a model folder with siglip/ (default: the shipped demo)")
    return parser.parse_args(argv)


def text_pooler(model, tokenizer, config: dict, args, texts: list[str]):
    """``pooled(texts)``: the text encoder's pooled output, computed once per report when only the
    head trains, else run every call (LoRA adapters train)."""
    max_length = int(config["model"].get("text_max_length", 512))
    if args.text_trainable == "head":
        start = time.perf_counter()
        with torch.no_grad():
            table = pool_texts(model, tokenizer, texts, max_length)
        print(f"{len(table)} reports pooled by {config['model']['text_encoder']} in {time.perf_counter() - start:.0f} s")
        return lambda batch: torch.stack([table[t] for t in batch])
    set_text_trainable(model, args.text_trainable)
    model.language_encoder.train()

    def pooled(batch):
        tokens = tokenizer(list(batch), max_length=max_length, truncation=True, padding="longest", return_tensors="pt")
        return model.pool_text(tokens["input_ids"], tokens["attention_mask"])

    return pooled


def oracle_side(model, config: dict, train_cases: list, test_cases: list):
    """The oracle image side: a linear embedding of each case's ground-truth attributes (one-hot), with
    the preset's initial temperature and bias. Returns (x_train, x_test, module, image_side, t', bias)."""
    vocab: dict[tuple, int] = {}
    for case in train_cases + test_cases:
        for item in case_attributes(case):
            vocab.setdefault(item, len(vocab))

    def one_hot(cases):
        out = torch.zeros(len(cases), len(vocab))
        for row, case in enumerate(cases):
            out[row, [vocab[item] for item in case_attributes(case)]] = 1.0
        return out

    oracle = torch.nn.Linear(len(vocab), model.mm_language_proj.out_features)
    t_prime = torch.tensor(float(config["model"].get("t_prime", 2.659)), requires_grad=True)
    bias = torch.tensor(float(config["model"].get("bias", 0.0)), requires_grad=True)
    return one_hot(train_cases), one_hot(test_cases), oracle, lambda rows, test=False: F.normalize(oracle(rows), dim=-1), t_prime, bias


def embedded_side(model, data: Path):
    """The shipped image tower's frozen embeddings of the split's volumes, with its temperature and bias.
    Returns (x_train, x_test, module, image_side, t', bias) as `oracle_side` does."""
    start = time.perf_counter()
    fixed_train, fixed_test = image_embeddings(model, data, "train"), image_embeddings(model, data, "test")
    print(f"{len(fixed_train) + len(fixed_test)} volumes embedded by the shipped image tower in {time.perf_counter() - start:.0f} s")
    t_prime = model.t_prime.detach().clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)
    return (torch.arange(len(fixed_train)), torch.arange(len(fixed_test)), torch.nn.Module(),  # nothing to learn
            lambda rows, test=False: (fixed_test if test else fixed_train)[rows], t_prime, bias)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_preset(args.preset)
    if args.image_side == "embedded":
        from napari_med3dvlm.model.loading import load_siglip

        model, tokenizer = load_siglip(args.model, dtype=torch.float32)
    else:
        model, tokenizer = build_siglip(config)
    model.eval()
    torch.manual_seed(args.seed)  # after build_siglip, which seeds the vision tower's init
    train_cases, train_texts = load_split(args.data, "train")
    test_cases, test_texts = load_split(args.data, "test")
    pooled = text_pooler(model, tokenizer, config, args, train_texts + test_texts)
    if args.image_side == "embedded":
        x_train, x_test, oracle, image_side, t_prime, bias = embedded_side(model, args.data)
    else:
        x_train, x_test, oracle, image_side, t_prime, bias = oracle_side(model, config, train_cases, test_cases)
    text_head = model.mm_language_proj
    if args.image_side == "embedded":
        with torch.no_grad():
            before = recall(F.normalize(text_head(pooled_all(pooled, test_texts)), dim=-1), image_side(x_test, True))
        print("before tuning the text side: " + "  ".join(f"R@{k} {v:.1%}" for k, v in before.items()))
    encoder_params = [p for p in model.language_encoder.parameters() if p.requires_grad and args.text_trainable != "head"]
    params = [*oracle.parameters(), *text_head.parameters(), t_prime, bias, *encoder_params]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    clock = TrainingClock()
    batch = 32
    labels = 2 * torch.eye(batch) - 1
    for _ in range(args.steps):
        idx = torch.randint(0, len(x_train), (batch,))
        image = image_side(x_train[idx])
        text = F.normalize(text_head(pooled([train_texts[i] for i in idx])), dim=-1)
        logits = image @ text.T * t_prime.exp() + bias
        loss = -F.logsigmoid(labels * logits).sum() / batch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"{args.steps} steps in {clock.elapsed():.0f} s (text side: {args.text_trainable})")
    model.eval()
    with torch.no_grad():
        r = recall(F.normalize(text_head(pooled_all(pooled, test_texts)), dim=-1), image_side(x_test, True))
    n = len(test_cases)
    side = "a perfect image side" if args.image_side == "oracle" else "the shipped image tower"
    for k, value in r.items():
        print(f"text -> case R@{k:<2} with {side}: {value:6.1%}   (chance {min(1.0, k / n):6.1%}, N={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
