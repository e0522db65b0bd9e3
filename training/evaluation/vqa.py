"""VQA scoring per M3D question category, and the answer-prior (text-only) baseline.

Closed questions are scored as the reference does: an output is right iff it contains
``"{letter}."`` for the correct letter. Open questions get the report metrics per category.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Sequence

from .text_metrics import METRICS, text_metrics

CATEGORIES = {1: "Plane", 2: "Phase", 3: "Organ", 4: "Abnormality", 5: "Location"}


def category_name(question_type) -> str:
    try:
        return CATEGORIES[int(question_type)]
    except (TypeError, ValueError, KeyError):
        return str(question_type)


def closed_correct(output: str, answer_choice: str) -> bool:
    return f"{str(answer_choice).strip()}." in output


def closed_accuracy(outputs: Sequence[str], answer_choices: Sequence[str], question_types: Sequence) -> dict:
    """``{"overall": acc, "Plane": acc, ..., "n": {...}}``."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for out, letter, qtype in zip(outputs, answer_choices, question_types, strict=True):
        ok = closed_correct(out, letter)
        hits[category_name(qtype)].append(ok)
        hits["overall"].append(ok)
    return {"accuracy": {k: sum(v) / len(v) for k, v in hits.items()}, "n": {k: len(v) for k, v in hits.items()}}


def open_metrics(outputs: Sequence[str], answers: Sequence[str], question_types: Sequence, metrics=METRICS,
                 bertscore_model: str | None = None) -> dict[str, dict[str, float]]:
    """Text metrics per category and overall."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, qtype in enumerate(question_types):
        groups[category_name(qtype)].append(i)
    result = {"overall": text_metrics(list(outputs), list(answers), metrics, bertscore_model)}
    for name, idx in groups.items():
        result[name] = text_metrics([outputs[i] for i in idx], [answers[i] for i in idx], metrics, bertscore_model)
    return result


class AnswerPrior:
    """Blind baseline: the most frequent training answer for the exact question text, else for
    the question's category. Closed questions: the choice that was right most often."""

    def __init__(self, records: Iterable[dict]):
        self.by_question: dict[str, Counter] = defaultdict(Counter)
        self.by_category: dict[str, Counter] = defaultdict(Counter)
        for r in records:
            self.by_question[r["question"]][r["answer"]] += 1
            self.by_category[category_name(r["question_type"])][r["answer"]] += 1

    def _counts(self, record: dict) -> tuple[Counter, Counter]:
        category = self.by_category.get(category_name(record["question_type"]), Counter())
        return self.by_question.get(record["question"], Counter()), category

    def open_answer(self, record: dict) -> str:
        question, category = self._counts(record)
        counts = question or category
        return counts.most_common(1)[0][0] if counts else ""

    def closed_output(self, record: dict) -> str:
        """``"B. Liver"``: the choice with the highest (question, category) training counts."""
        question, category = self._counts(record)
        choices = record["choices"]
        best = max(range(len(choices)), key=lambda i: (question.get(choices[i], 0), category.get(choices[i], 0), -i))
        return f"{'ABCD'[best]}. {choices[best]}"


def answer_prior_baseline(train_records: Sequence[dict], test_records: Sequence[dict]) -> dict:
    """Per-category accuracy of the answer prior, open (exact answer) and closed (letter)."""
    prior = AnswerPrior(train_records)
    types = [r["question_type"] for r in test_records]
    closed = closed_accuracy([prior.closed_output(r) for r in test_records],
                             [r["answer_choice"] for r in test_records], types)
    exact: dict[str, list[bool]] = defaultdict(list)
    for r in test_records:
        ok = prior.open_answer(r).strip().lower() == r["answer"].strip().lower()
        exact[category_name(r["question_type"])].append(ok)
        exact["overall"].append(ok)
    return {
        "closed_accuracy": closed["accuracy"],
        "open_exact_match": {k: sum(v) / len(v) for k, v in exact.items()},
        "n": closed["n"],
    }
