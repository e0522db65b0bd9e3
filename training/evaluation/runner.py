"""Model-agnostic evaluation runs: callables in, metrics out.

A model is reached only through callables, so the training stage ``eval``, the CLI and the blind
baselines share one code path:

- ``predict(image, prompt) -> str`` for reports and VQA (``image`` is the dataset's (1, D, H, W)
  tensor, ``prompt`` the text after the image tokens, from the shared prompt builder);
- ``embed_images(images) -> (N, E)`` and ``embed_texts(texts) -> (N, E)`` for retrieval.

``blanked(predict)`` is the image-blind baseline: the same model with every image replaced by
zeros, which shows how much of a score comes from the text prior alone.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Sequence

import numpy as np
import torch

from napari_med3dvlm.model import prompts

from .retrieval import DEFAULT_SIZES, retrieval_metrics
from .text_metrics import METRICS, text_metrics
from .vqa import answer_prior_baseline, closed_accuracy, open_metrics

Predict = Callable[[torch.Tensor, str], str]
EVAL_SEED = 42


def blanked(predict: Predict) -> Predict:
    """The same predictor, shown an all-zero image."""

    def blind(image: torch.Tensor, prompt: str) -> str:
        return predict(torch.zeros_like(image), prompt)

    return blind


def evaluate_reports(predict: Predict, dataset, limit: int | None = 1000, metrics=METRICS, seed: int = EVAL_SEED,
                     bertscore_model: str | None = None) -> dict:
    """Report generation on ``dataset[:limit]`` (CaptionDataset); the report request is a random
    template drawn from a seeded generator, as the reference's ``eval_caption.py`` does."""
    rng = random.Random(seed)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    predictions, references = [], []
    start = time.perf_counter()
    for i in range(n):
        item = dataset[i]
        predictions.append(predict(item["image"], prompts.report_text(rng=rng)))
        references.append(item["text"])
    result = text_metrics(predictions, references, metrics, bertscore_model)
    result["seconds"] = time.perf_counter() - start
    return {"metrics": result, "predictions": predictions, "references": references}


def evaluate_vqa(predict: Predict, dataset, limit: int | None = None, closed: bool = True, metrics=METRICS,
                 bertscore_model: str | None = None) -> dict:
    """Closed (choices in the prompt, letter accuracy) or open (answer text, text metrics) VQA on
    ``dataset[:limit]`` (VQADataset), per M3D question category."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    outputs, records = [], []
    start = time.perf_counter()
    for i in range(n):
        item = dataset[i]
        choices = item["choices"] if closed else None
        if closed and len(choices) != 4:
            raise ValueError(f"row {i}: closed evaluation needs four choices, got {len(choices)}")
        outputs.append(predict(item["image"], prompts.question_text(item["question"], choices)))
        records.append({k: v for k, v in item.items() if k != "image"})
    types = [r["question_type"] for r in records]
    if closed:
        scores = closed_accuracy(outputs, [r["answer_choice"] for r in records], types)
    else:
        scores = open_metrics(outputs, [r["answer"] for r in records], types, metrics, bertscore_model)
    return {"metrics": scores, "outputs": outputs, "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate_retrieval(embed_images: Callable, embed_texts: Callable, dataset, sizes=DEFAULT_SIZES,
                       batch_size: int = 16) -> dict:
    """R@1/5/10 image->text and text->image on the first N pairs of a CaptionDataset."""
    n = min(max(sizes), len(dataset))
    image_vectors, text_vectors = [], []
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        image_vectors.append(np.asarray(_to_numpy(embed_images(torch.stack([it["image"] for it in items])))))
        text_vectors.append(np.asarray(_to_numpy(embed_texts([it["text"] for it in items]))))
    return retrieval_metrics(np.concatenate(image_vectors), np.concatenate(text_vectors), sizes)


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return x


def prior_baseline(train_dataset, test_dataset) -> dict:
    """Answer-prior baseline from two VQADatasets (reads no images)."""
    train = [train_dataset.record(i) for i in range(len(train_dataset))]
    test = [test_dataset.record(i) for i in range(len(test_dataset))]
    return answer_prior_baseline(train, test)


def run_evaluation(*, predict: Predict | None = None, caption_dataset=None, vqa_dataset=None,
                   vqa_train_dataset=None, embed_images=None, embed_texts=None,
                   retrieval_sizes: Sequence[int] = DEFAULT_SIZES, caption_samples: int | None = 1000,
                   vqa_samples: int | None = None, blank_baseline: bool = True, metrics=METRICS,
                   bertscore_model: str | None = None) -> dict:
    """Everything that applies to the callables and datasets given; a JSON-ready dict."""
    results: dict = {}
    if embed_images is not None and embed_texts is not None and caption_dataset is not None:
        results["retrieval"] = evaluate_retrieval(embed_images, embed_texts, caption_dataset, retrieval_sizes)
    runs = [("model", predict)] + ([("blank image", blanked(predict))] if predict and blank_baseline else [])
    for name, fn in runs:
        if fn is None:
            continue
        if caption_dataset is not None:
            results.setdefault("report", {})[name] = evaluate_reports(
                fn, caption_dataset, caption_samples, metrics, bertscore_model=bertscore_model)["metrics"]
        if vqa_dataset is not None:
            results.setdefault("vqa_closed", {})[name] = evaluate_vqa(fn, vqa_dataset, vqa_samples, True)["metrics"]
            results.setdefault("vqa_open", {})[name] = evaluate_vqa(
                fn, vqa_dataset, vqa_samples, False, metrics, bertscore_model)["metrics"]
    if vqa_dataset is not None and vqa_train_dataset is not None:
        results["answer_prior"] = prior_baseline(vqa_train_dataset, vqa_dataset)
    return results
