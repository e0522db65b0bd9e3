"""Does the language model read the findings off the image? Teacher-forced measures on phantom reports.

Generated reports show lesion reading only once the model names a finding more readily than its
prior, so they move late and in steps. Two teacher-forced measures move earlier, each with the real
volume and with the blanked one (all zeros, as the evaluation blanks it):

* **loss per token kind**: mean next-token cross-entropy of the reference report's tokens, split by
  the sentence they belong to: the technique sentence (the first), the finding sentences (those the
  finding reader reads a finding from) and the normal statements. ``finding_gain`` = blanked - real
  on the finding tokens: what the image is worth to the model where the findings are written.
* **report ranked**: the case's own report against ``distractors`` reports of other cases of the same
  region whose finding sets differ, each given this case's technique sentence, so that only the
  findings (and the normal statements that follow from them) tell them apart. The one with the lowest
  summed loss is the model's pick (chance 1 / (distractors + 1)).

Sentence kinds and finding sets come from the generator's reports and truth (``case.json``); the model
sees the volume and the prompt only. The fine-tuning stage logs these as its learning curve
(``finetune.evaluate_every``); ``experiments/finding_tokens.py`` runs them on finished model folders.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

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


def encode(tokenizer, prompt: str, report: str) -> tuple[list[int], list[str | None], int]:
    """Token ids of ``prompt + " " + report`` as the training collator tokenises a caption sample (eos
    appended), the kind of every token (None on the prompt and on eos) and the prompt's length."""
    text = prompt + " " + report
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offset = len(prompt) + 1
    spans = [(a + offset, b + offset, kind) for a, b, kind in report_parts(report)]
    kinds: list[str | None] = []
    for start, end in encoded["offset_mapping"]:
        middle = (start + end) / 2
        kinds.append(next((kind for a, b, kind in spans if a - 1 <= middle < b + 1), None)
                     if start >= offset - 1 else None)
    ids = list(encoded["input_ids"]) + [tokenizer.eos_token_id]
    return ids, kinds + [None], len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def token_losses(vlm, rows: list[list[int]], features: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy at every position of each row (a right-padded batch; NaN on padding)."""
    length = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    device = features.device
    logits = vlm(input_ids=ids.to(device), image_features=features, attention_mask=mask.to(device)).logits.float()
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")
    return losses.masked_fill(mask[:, 1:].to(device) == 0, float("nan")).cpu()


def has_truth(root: Path, entries: list[dict]) -> bool:
    """Whether these M3D-Cap entries are phantom cases: a ``case.json`` (the generator's truth) beside
    each report."""
    return bool(entries) and all((Path(root) / e["text"]).with_name("case.json").is_file() for e in entries)


def phantom_reports(root: Path, entries: list[dict]) -> list[tuple[str, str, dict]]:
    """(image path relative to ``root``, report, case truth) of M3D-Cap entries of phantom cases."""
    out = []
    for entry in entries:
        report_path = Path(root) / entry["text"]
        case = json.loads(report_path.with_name("case.json").read_text(encoding="utf-8"))
        out.append((entry["image"], " ".join(report_path.read_text(encoding="utf-8").split()), case))
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


@torch.no_grad()
def score_reports(vlm, tokenizer, cases, features: dict[str, list[torch.Tensor]], distractors: int = 3) -> dict:
    """Both measures over ``cases`` (`phantom_reports`), ``features[image][i]`` the (1, N, hidden) image
    embeddings of case i with the real (``"real"``) and the blanked (``"blank"``) volume."""
    from napari_med3dvlm.model import prompts

    n_image = features["real"][0].shape[1]
    rng = random.Random(0)
    sums = {(image, kind): [0.0, 0] for image in features for kind in KINDS}
    ranked = dict.fromkeys(features, 0)
    for index, (_, report, _) in enumerate(cases):
        prompt = prompts.report_prompt(n_image, rng=random.Random(index))
        candidates = [report] + distractors_of(index, cases, distractors, rng)
        encoded = [encode(tokenizer, prompt, text) for text in candidates]
        for image, per_case in features.items():
            losses = token_losses(vlm, [ids for ids, _, _ in encoded], per_case[index].expand(len(encoded), -1, -1))
            totals = []
            for row, (ids, kinds, prompt_len) in enumerate(encoded):
                per_token = losses[row, prompt_len - 1 : len(ids) - 1]
                totals.append(float(per_token.sum()))
                if row == 0:
                    for position, kind in enumerate(kinds[prompt_len:]):
                        if kind is not None:
                            sums[(image, kind)][0] += float(per_token[position])
                            sums[(image, kind)][1] += 1
            ranked[image] += int(min(range(len(totals)), key=totals.__getitem__) == 0)
    result = {}
    for image in features:
        for kind in KINDS:
            total, count = sums[(image, kind)]
            result[f"loss_{kind}_{image}"] = round(total / max(count, 1), 4)
        result[f"report_ranked_{image}"] = round(ranked[image] / max(len(cases), 1), 4)
    if "blank" in features:
        result["finding_gain"] = round(result["loss_finding_blank"] - result["loss_finding_real"], 4)
    return result


def finding_curve(tokenizer, root: Path, entries: list[dict], distractors: int = 3):
    """``evaluate(model)`` for the fine-tuning loop: `score_reports` over these M3D-Cap entries (phantom
    test cases). A frozen image tower encodes the volumes (and the blanked volume) once; one that is
    trained (``finetune.train_vision``) at every evaluation, as the projector."""
    from ..data.m3d import load_image

    reports = phantom_reports(root, entries)
    tokens: dict[str, list] | None = None

    def tower_tokens(vlm, volume: torch.Tensor):
        tower = vlm.vision_tower
        volume = volume.to(device=next(tower.parameters()).device, dtype=next(tower.parameters()).dtype)
        selected = vlm.select_image_tokens(tower(volume))
        return tuple(selected) if isinstance(selected, (list, tuple)) else (selected,)

    @torch.no_grad()
    def evaluate(model) -> dict:
        nonlocal tokens
        vlm = getattr(model, "vlm", model)  # the loop hands over the LabelledLossVLM wrapper
        trained = [m for m in (vlm.vision_tower, vlm.mm_projector, vlm.language_model) if m.training]
        for module in trained:
            module.eval()
        if tokens is None or any(p.requires_grad for p in vlm.vision_tower.parameters()):
            volumes = [load_image(Path(root) / image)[None] for image, _, _ in reports]
            tokens = {"real": [tower_tokens(vlm, v) for v in volumes],
                      "blank": [tower_tokens(vlm, torch.zeros_like(volumes[0]))]}
        dtype = vlm.mm_projector_dtype
        features = {image: [vlm.mm_projector(*[t.to(dtype) for t in parts]) for parts in per_case]
                    for image, per_case in tokens.items()}
        features["blank"] = features["blank"] * len(reports)  # one blanked volume for every case
        scores = score_reports(vlm, tokenizer, reports, features, distractors)
        for module in trained:
            module.train()
        return scores

    return evaluate
