"""Does the language model read the findings off the image, before greedy decoding shows it?

    python experiments/finding_tokens.py --data data/phantoms --model training/checkpoints/demo-candidate \
        [--model OTHER_FOLDER ...] [--n 200] [--distractors 3]

Generated reports say whether a model names the findings only once it names them more readily than
its prior, so they move late and in steps. Two teacher-forced measures move earlier, on the phantom
test split (cases no training run used), each with the real volume and with the blanked one (all
zeros, as the evaluation blanks it):

* **loss per token kind**: mean next-token cross-entropy of the reference report's tokens, split by
  the sentence they belong to: the technique sentence (the first), the finding sentences (those the
  finding reader reads a finding from) and the normal statements. ``finding gain`` = blanked - real on
  the finding tokens: what the image is worth to the model where the findings are written.
* **report ranked**: the case's own report against ``--distractors`` reports of other test cases of
  the same region whose finding sets differ, each given this case's technique sentence, so only the
  findings (and the normal statements that follow from them) tell them apart; the one with the
  highest summed log-probability is the model's pick (chance 1 / (distractors + 1)).

The finding labels come from the generator's reports and truth (case.json); the model sees the
volume and the prompt only. Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("technique", "finding", "normal")


def report_parts(report: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) character spans of the report's sentences."""
    from napari_med3dvlm.phantoms.findings import read_sentence, sentences

    spans, at = [], 0
    for index, sentence in enumerate(sentences(report)):
        start = report.index(sentence, at)
        at = start + len(sentence)
        kind = "technique" if index == 0 else ("finding" if read_sentence(sentence) else "normal")
        spans.append((start, at, kind))
    return spans


def encode(tokenizer, prompt: str, report: str):
    """Token ids of prompt + report (as the training collator tokenises them, eos appended) and the
    kind of every token (None on the prompt and on eos)."""
    text = prompt + " " + report
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offset = len(prompt) + 1
    spans = [(a + offset, b + offset, kind) for a, b, kind in report_parts(report)]
    kinds = []
    for start, end in encoded["offset_mapping"]:
        middle = (start + end) / 2
        kinds.append(next((kind for a, b, kind in spans if a - 1 <= middle < b + 1), None) if start >= offset - 1 else None)
    ids = list(encoded["input_ids"]) + [tokenizer.eos_token_id]
    return ids, kinds + [None], len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def token_losses(model, rows: list[list[int]], features):
    """Next-token cross-entropy at every position of each row (right-padded batch; NaN on padding)."""
    import torch
    import torch.nn.functional as F

    length = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, image_features=features, attention_mask=mask).logits.float()
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return losses.masked_fill(mask[:, 1:] == 0, float("nan"))


def test_cases(root: Path, limit: int) -> list[tuple[dict, str, dict]]:
    entries = json.loads((root / "M3D_Cap.json").read_text(encoding="utf-8"))["test"][:limit]
    out = []
    for entry in entries:
        report_path = root / entry["text"]
        case = json.loads(report_path.with_name("case.json").read_text(encoding="utf-8"))
        out.append((entry, " ".join(report_path.read_text(encoding="utf-8").split()), case))
    return out


def distractors_of(index: int, cases, count: int, rng: random.Random) -> list[str]:
    """Reports of other same-region cases with another finding set, with this case's technique sentence."""
    from napari_med3dvlm.phantoms.findings import sentences, truth_findings

    _, report, case = cases[index]
    own = truth_findings(case)
    pool = [other for j, (_, other, c) in enumerate(cases)
            if j != index and c["region"] == case["region"] and truth_findings(c) != own]
    picked = rng.sample(pool, min(count, len(pool)))
    technique = sentences(report)[0]
    return [" ".join([technique] + sentences(other)[1:]) for other in picked]


def measure(model_source: str, root: Path, limit: int, distractors: int) -> dict:
    import numpy as np
    import torch

    from napari_med3dvlm.model import prompts
    from napari_med3dvlm.model.auto import load_vlm
    from training.data.m3d import load_image

    model, tokenizer = load_vlm(model_source, dtype=torch.float32)
    model.eval()
    n_image = model.config.proj_out_num
    cases = test_cases(root, limit)
    rng = random.Random(0)
    sums = {(image, kind): [0.0, 0] for image in ("real", "blank") for kind in KINDS}
    ranked = {"real": 0, "blank": 0}
    start = time.perf_counter()
    for index, (entry, report, _) in enumerate(cases):
        volume = load_image(root / entry["image"])[None]  # (1, 1, D, H, W), as training reads it
        prompt = prompts.report_prompt(n_image, rng=random.Random(index))
        candidates = [report] + distractors_of(index, cases, distractors, rng)
        encoded = [encode(tokenizer, prompt, text) for text in candidates]
        with torch.no_grad():
            real = model.encode_images(volume)
            blank = model.encode_images(torch.zeros_like(volume))
        for image, features in (("real", real), ("blank", blank)):
            losses = token_losses(model, [ids for ids, _, _ in encoded], features.expand(len(encoded), -1, -1))
            totals = []
            for row, (ids, kinds, prompt_len) in enumerate(encoded):
                per_token = losses[row, prompt_len - 1 : len(ids) - 1]
                totals.append(float(per_token.sum()))
                if row == 0:
                    for position, kind in enumerate(kinds[prompt_len:]):
                        if kind is not None:
                            sums[(image, kind)][0] += float(per_token[position])
                            sums[(image, kind)][1] += 1
            ranked[image] += int(int(np.argmin(totals)) == 0)
    result = {"model": model_source, "cases": len(cases), "distractors": distractors,
              "seconds": round(time.perf_counter() - start, 1)}
    for image in ("real", "blank"):
        for kind in KINDS:
            total, count = sums[(image, kind)]
            result[f"loss_{kind}_{image}"] = round(total / max(count, 1), 4)
        result[f"report_ranked_{image}"] = round(ranked[image] / max(len(cases), 1), 4)
    result["finding_gain"] = round(result["loss_finding_blank"] - result["loss_finding_real"], 4)
    result["finding_tokens"] = sums[("real", "finding")][1]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--model", action="append", required=True, help="a model folder (repeatable)")
    parser.add_argument("--n", type=int, default=200, help="test cases")
    parser.add_argument("--distractors", type=int, default=3)
    args = parser.parse_args(argv)
    for source in args.model:
        print(json.dumps(measure(source, args.data, args.n, args.distractors)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
