"""Eval: M3D-Bench on the test split, for the trained model and for the same model with blanked images.

The blanked-image run answers from the text alone; the gap to it is what the model learned to read
from the volume (on templated phantom questions, priors alone already score well).

- Retrieval: SigLIP R@1/5/10 image->text and text->image on the first N test pairs.
- Report generation, closed VQA (correct when ``"B."`` is in the answer), open VQA and yes/no:
  greedy decoding (the reference samples; greedy makes the numbers reproducible).
- Closed VQA a second way (``closed_scored``): the four choices ranked by likelihood as the answer
  to the open question, as the plugin answers closed questions by default.

Metric functions come from `training.evaluation`; this module only produces predictions.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from napari_med3dvlm.model import prompts

from ..config import stage_config
from ..data import sources
from ..data.instructions import _get, choices_of
from .common import stage_dir


def _sample_indices(length: int, count: int | None, seed: int = 42) -> list[int]:
    if count is None or count >= length:
        return list(range(length))
    return sorted(random.Random(seed).sample(range(length), count))


# ---------------------------------------------------------------------- retrieval
@torch.no_grad()
def retrieval_embeddings(siglip, tokenizer, dataset, count: int, blank: bool, batch_size: int = 16, max_length: int = 512):
    """(image embeddings, text embeddings) of the first ``count`` test pairs."""
    image_feats, text_feats = [], []
    count = min(count, len(dataset))
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        images = torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items])
        if blank:
            images = torch.zeros_like(images)
        tokens = tokenizer(
            [str(_get(it, "text", "report")) for it in items],
            max_length=max_length, truncation=True, padding="longest", return_tensors="pt",
        )
        image_feats.append(siglip.encode_image(images))
        text_feats.append(siglip.encode_text(tokens["input_ids"], tokens["attention_mask"]))
    return torch.cat(image_feats).numpy(), torch.cat(text_feats).numpy()


# ---------------------------------------------------------------------- generation
@torch.no_grad()
def generate_answers(model, tokenizer, prompts_: list[str], images: list[torch.Tensor], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers; prompts of equal token length share a batch (the splice forbids padding)."""
    encoded = [tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"][0] for p in prompts_]
    buckets: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        buckets[len(ids)].append(index)
    answers = [""] * len(prompts_)
    for indices in buckets.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            input_ids = torch.stack([encoded[i] for i in chunk]).to(model.device)
            batch_images = torch.stack([images[i] for i in chunk]).to(model.device)
            new_tokens = model.generate(
                input_ids=input_ids,
                images=batch_images,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            for i, row in zip(chunk, new_tokens):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


@torch.no_grad()
def scored_closed_answers(model, tokenizer, samples: dict, images: list[torch.Tensor]) -> list[str]:
    """Closed answers by ranking the four choices (the plugin's default ``closed_answer: score``)."""
    answers = []
    proj_out_num = model.config.proj_out_num
    for question, choices, image in zip(samples["question"], samples["choices"], images):
        prompt = prompts.question_prompt(proj_out_num, question)
        input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        continuations = [prompts.choice_continuation_ids(tokenizer, c) for c in choices]
        scores = model.score_continuations(input_ids, continuations, images=image.unsqueeze(0).to(model.device))
        best = int(scores.argmax())
        answers.append(prompts.closed_answer_text(prompts.CHOICE_LETTERS[best], choices[best]))
    return answers


def task_samples(config: dict, kind: str, count: int | None, proj_out_num: int):
    """(prompts, images, references, extra) for one task on the test split."""
    if kind == "caption":
        dataset = sources.caption_dataset(config, "test")
    else:
        dataset = sources.vqa_dataset(config, "test", kind)
    out = {"prompt": [], "image": [], "reference": [], "letter": [], "type": [], "question": [], "choices": [],
           "case": []}
    for index in _sample_indices(len(dataset), count):
        item = dataset[index]
        if kind == "caption":
            # The plugin's report request (the first template): equal-length prompts batch together.
            prompt = prompts.report_prompt(proj_out_num)
            reference = str(_get(item, "text", "report"))
            out["case"].append(_case_truth(config, item))
        elif kind == "closed":
            question = str(_get(item, "question", "Question"))
            prompt = prompts.question_prompt(proj_out_num, question, choices_of(item))
            reference = str(_get(item, "answer", "Answer"))
            out["question"].append(question)
            out["choices"].append(list(choices_of(item)))
        else:
            prompt = prompts.question_prompt(proj_out_num, str(_get(item, "question", "Question")))
            reference = str(_get(item, "answer", "Answer"))
        out["prompt"].append(prompt)
        out["image"].append(torch.as_tensor(item["image"], dtype=torch.float32))
        out["reference"].append(reference)
        out["letter"].append(str(_get(item, "answer_choice", "Answer Choice", default="")))
        out["type"].append(str(_get(item, "question_type", "Question Type", default="all")))
    return out


def _case_truth(config: dict, item: dict) -> dict | None:
    """The phantom ground truth (``case.json`` beside the volume), or None for other data."""
    path = Path(config["data"]["root"]) / str(item.get("image_path", ""))
    truth = path.parent / "case.json"
    return json.loads(truth.read_text()) if item.get("image_path") and truth.exists() else None


TEXT_METRICS = ("bleu1", "rouge1", "meteor")


def score_task(kind: str, samples: dict, answers: list[str]) -> dict:
    """The reference's metrics (`training.evaluation`) for one task's answers."""
    from ..evaluation import closed_accuracy, open_metrics, text_metrics

    if kind == "closed":
        return closed_accuracy(answers, samples["letter"], samples["type"])
    if kind == "caption":
        result = text_metrics(answers, samples["reference"], TEXT_METRICS)
        if samples.get("case") and all(c is not None for c in samples["case"]):
            from napari_med3dvlm.phantoms.findings import score_findings

            result["findings"] = score_findings(answers, samples["case"])
        return result
    result = open_metrics(answers, samples["reference"], samples["type"], TEXT_METRICS)
    if kind == "yn":
        hits = [a.strip().lower().startswith(r.strip().lower()) for a, r in zip(answers, samples["reference"])]
        result["accuracy"] = sum(hits) / max(1, len(hits))
    return result


def summarize(results: dict) -> dict[str, dict[str, float | None]]:
    """Headline numbers, model vs blanked image: ``{metric: {"model": x, "blank": y}}``."""

    def pick(key: str, *path: str):
        node = results.get(key)
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    rows: dict[str, dict] = {}
    for name, key, path in (
        ("retrieval IR@1 (image->text)", "retrieval", None),
        ("retrieval TR@1 (text->image)", "retrieval", None),
        ("closed VQA accuracy", "closed", ("accuracy", "overall")),
        ("closed VQA accuracy, choices ranked", "closed_scored", ("accuracy", "overall")),
        ("open VQA METEOR", "open", ("overall", "meteor")),
        ("yes/no VQA accuracy", "yn", ("accuracy",)),
        ("report METEOR", "caption", ("meteor",)),
        ("report finding F1", "caption", ("findings", "finding", "f1")),
        ("report focal finding F1", "caption", ("findings", "focal", "f1")),
        ("report exact finding set", "caption", ("findings", "exact_set")),
        ("report technique (region, phase, plane)", "caption", ("findings", "technique")),
    ):
        if key == "retrieval":
            metric = "IR@1" if "IR@1" in name else "TR@1"
            sizes = results.get("retrieval", {})
            size = next(iter(sizes), None)
            rows[f"{name}, {size}"] = {
                "model": pick("retrieval", size, metric) if size else None,
                "blank": pick("retrieval/blank", size, metric) if size else None,
            }
            continue
        rows[name] = {"model": pick(key, *path), "blank": pick(f"{key}/blank", *path)}
    for category in sorted((results.get("closed", {}).get("accuracy") or {})):
        if category != "overall":
            rows[f"closed VQA {category}"] = {
                "model": pick("closed", "accuracy", category),
                "blank": pick("closed/blank", "accuracy", category),
            }
    for category in sorted((results.get("closed_scored", {}).get("accuracy") or {})):
        if category != "overall":
            rows[f"closed VQA {category}, choices ranked"] = {
                "model": pick("closed_scored", "accuracy", category),
                "blank": pick("closed_scored/blank", "accuracy", category),
            }
    return rows


def load_trained_vlm(config: dict):
    from napari_med3dvlm.model import load_vlm

    source = config.get("merge", {}).get("embedded_output") or config.get("merge", {}).get("output")
    return load_vlm(str(source), device="cpu", dtype=torch.float32)


def run(config: dict) -> dict:
    ecfg = stage_config(config, "eval")
    out_dir = stage_dir(config, "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results: dict = {}
    previous = out_dir / "results.json"
    if ecfg.get("update") and previous.exists():
        # Re-score some parts (e.g. ``eval.tasks=[]`` for retrieval only) and keep the others.
        results = json.loads(previous.read_text())

    from .siglip import trained_siglip

    found = trained_siglip(config)
    if found is not None:
        siglip, tokenizer, source = found
        print(f"[eval] retrieval with the SigLIP of {source}")
        captions = sources.caption_dataset(config, "test")
        max_length = int(config["model"].get("text_max_length", 512))
        from ..evaluation import retrieval_metrics

        sizes = ecfg.get("retrieval_sizes", [100])
        for blank in (False, True):
            images, texts = retrieval_embeddings(siglip, tokenizer, captions, max(sizes), blank, max_length=max_length)
            results["retrieval/blank" if blank else "retrieval"] = retrieval_metrics(images, texts, sizes=sizes)
        print(f"[eval] retrieval: {json.dumps(results['retrieval'])}")
        del siglip

    tasks = ecfg.get("tasks", ["closed", "open", "yn", "caption"])
    model, tokenizer = load_trained_vlm(config) if tasks else (None, None)
    proj_out_num = model.config.proj_out_num if model is not None else 0
    counts = {
        "caption": ecfg.get("caption_samples"),
        "closed": ecfg.get("vqa_samples"),
        "open": ecfg.get("vqa_samples"),
        "yn": ecfg.get("yn_samples", ecfg.get("vqa_samples")),
    }
    new_tokens = {"caption": int(ecfg.get("max_new_tokens", 256)), "closed": 24, "open": 24, "yn": 8}
    predictions = open(out_dir / "predictions.jsonl", "a" if ecfg.get("update") else "w", encoding="utf-8")
    caption_run = None
    for kind in tasks:
        try:
            samples = task_samples(config, kind, counts[kind], proj_out_num)
        except (FileNotFoundError, KeyError) as error:
            print(f"[eval] skipping {kind}: {error}")
            continue
        variants = [(kind, False), (kind, True)]
        if kind == "closed" and ecfg.get("closed_scored", True):
            variants += [("closed_scored", False), ("closed_scored", True)]
        for name, blank in variants:
            images = [torch.zeros_like(im) for im in samples["image"]] if blank else samples["image"]
            if name == "closed_scored":
                answers = scored_closed_answers(model, tokenizer, samples, images)
            else:
                answers = generate_answers(model, tokenizer, samples["prompt"], images, new_tokens[kind])
            key = f"{name}/blank" if blank else name
            results[key] = score_task(kind, samples, answers)
            if key == "caption":
                caption_run = (samples, answers)  # for the pointing game below
            print(f"[eval] {key}: {json.dumps(results[key])}")
            for prompt, answer, reference in zip(samples["prompt"], answers, samples["reference"]):
                question = prompt.replace(prompts.IMAGE_TOKEN, "")
                predictions.write(json.dumps({"task": key, "question": question, "answer": answer, "reference": reference}) + "\n")
    predictions.close()
    if caption_run and int(ecfg.get("pointing_samples", 20)):  # where the model looked (pointing game)
        from ..evaluation.pointing import eval_pointing

        results["pointing"] = eval_pointing(model, tokenizer, config, *caption_run, int(ecfg.get("pointing_samples", 20)))
        print(f"[eval] pointing: {json.dumps(results['pointing'])}")
    results["summary"] = summarize(results)
    earlier = results.get("minutes", 0.0) if ecfg.get("update") else 0.0
    results["minutes"] = round(earlier + (time.time() - start) / 60, 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    _write_model_card(config, results)
    return results


def _write_model_card(config: dict, results: dict) -> None:
    folder = config.get("merge", {}).get("embedded_output")
    if not folder or not Path(folder).exists():
        return
    from ..model_card import render_model_card

    (Path(folder) / "model_card.md").write_text(render_model_card(config, results))
