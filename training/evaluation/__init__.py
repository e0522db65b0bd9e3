"""Evaluation as in the Med3DVLM reference: retrieval recall, report metrics, VQA accuracy and
text metrics per question category, and blind baselines (blank image, answer prior).

Model-agnostic: metric functions take predictions and references; `runner` takes callables.
"""

from .retrieval import recall_at_k, retrieval_metrics
from .runner import blanked, evaluate_reports, evaluate_retrieval, evaluate_vqa, prior_baseline, run_evaluation
from .tables import to_markdown, write_results
from .text_metrics import bertscore, bleu1, meteor, rouge1, text_metrics
from .vqa import AnswerPrior, answer_prior_baseline, closed_accuracy, closed_correct, open_metrics

__all__ = [
    "AnswerPrior",
    "answer_prior_baseline",
    "bertscore",
    "blanked",
    "bleu1",
    "closed_accuracy",
    "closed_correct",
    "evaluate_reports",
    "evaluate_retrieval",
    "evaluate_vqa",
    "meteor",
    "open_metrics",
    "prior_baseline",
    "recall_at_k",
    "retrieval_metrics",
    "rouge1",
    "run_evaluation",
    "text_metrics",
    "to_markdown",
    "write_results",
]
