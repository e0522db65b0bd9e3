"""The vision stage's finding metrics, one module for the stage's learning curve and the experiments.

The measure that needs the lesion itself is the **case-level focal AUC**: for each focal kind, the
highest cell of a head over a case, ranked across cases against whether the case holds that kind. The
truth comes from the case's findings (`training.data.dense.case_kinds`), never from the cells: a small
lesion that no cell of the grid shows is still a lesion of the case (docs/training.md, fourth round).
"""

from __future__ import annotations

import numpy as np
import torch

from napari_med3dvlm.phantoms.case import FOCAL_KINDS, KINDS

from ..data.dense import FINDING_LABELS, TECHNIQUE, DenseDataset, collate_dense

#: Which entries of `FINDING_LABELS` are focal findings.
FOCAL = np.array([kind in FOCAL_KINDS for kind, _ in FINDING_LABELS])
#: The kind indices of the focal kinds.
FOCAL_INDEX = [KINDS.index(kind) for kind in FOCAL_KINDS]


def rank_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC: the Mann-Whitney U of positives against negatives over the number of pairs."""
    from scipy.stats import mannwhitneyu

    truth = np.asarray(truth, bool)
    score = np.asarray(score)
    positives, negatives = score[truth], score[~truth]
    return float(mannwhitneyu(positives, negatives).statistic / (len(positives) * len(negatives)))


def set_scores(predicted: np.ndarray, truth: np.ndarray, focal: np.ndarray = FOCAL) -> dict[str, float]:
    """Exact-set accuracy and micro precision/recall/F1 over (kind, site) findings."""
    def prf(p, t):
        tp = float((p & t).sum())
        precision = tp / max(1.0, float(p.sum()))
        recall = tp / max(1.0, float(t.sum()))
        f1 = 2 * precision * recall / max(1e-9, precision + recall)
        return precision, recall, f1

    precision, recall, f1 = prf(predicted, truth)
    return {
        "exact": float((predicted == truth).all(axis=1).mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "focal_f1": prf(predicted[:, focal], truth[:, focal])[2],
        "diffuse_f1": prf(predicted[:, ~focal], truth[:, ~focal])[2],
    }


def focal_case_aucs(case_kinds: np.ndarray, case_max: np.ndarray) -> dict[str, float]:
    """Case-level AUC per focal kind (kinds present in every case or in none are left out).

    ``case_kinds`` (N, NUM_KINDS) booleans from the findings; ``case_max`` (N, NUM_KINDS) the highest
    cell per case and kind."""
    truth = np.asarray(case_kinds, bool)
    return {kind: rank_auc(truth[:, k], case_max[:, k]) for kind, k in zip(FOCAL_KINDS, FOCAL_INDEX)
            if 0 < truth[:, k].sum() < len(truth)}


def mean_or_nan(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def evaluate_findings(model, dataset: DenseDataset, batch_size: int = 32) -> dict[str, float]:
    """Scores of the token head (and the pooled head) on ``dataset``, and the case-level focal AUC of
    the dense head and of the s3 token-kind head (mean over the focal kinds; 0.5 is chance), and the
    dense head's AUC for each focal kind."""
    was_training = model.training
    model.eval()
    preds, pooled, truth, dense_max, token_max, kinds_true = [], [], [], [], [], []
    technique, technique_true = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate_dense([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model(batch["images"])
        preds.append((out["findings"] > 0).numpy())
        pooled.append((out["findings_pooled"] > 0).numpy())
        truth.append(batch["labels"].numpy() > 0.5)
        dense_max.append(out["kind"].flatten(2).amax(2).numpy())
        token_max.append(out["token_kind"].flatten(2).amax(2).numpy())
        kinds_true.append(batch["case_kinds"].numpy() > 0.5)
        if "technique" in out and "technique" in batch:
            technique.append(out["technique"].numpy())
            technique_true.append(batch["technique"].numpy())
    model.train(was_training)
    truth = np.concatenate(truth)
    scores = set_scores(np.concatenate(preds), truth)
    scores["pooled_exact"] = set_scores(np.concatenate(pooled), truth)["exact"]
    # A high per-cell AUC can come from knowing which organs host lesions; this needs the lesion itself.
    true = np.concatenate(kinds_true)
    for name, values in (("dense", dense_max), ("token", token_max)):
        per_kind = focal_case_aucs(true, np.concatenate(values))
        scores[f"focal_case_auc_{name}"] = mean_or_nan(per_kind.values())
        if name == "dense":  # the learning curve shows each kind (docs/training.md)
            scores.update({f"focal_case_auc_{kind}": auc for kind, auc in per_kind.items()})
    if technique:  # accuracy of the technique head per attribute
        logits, target, start = np.concatenate(technique), np.concatenate(technique_true), 0
        for column, (name, values) in enumerate(TECHNIQUE):
            predicted = logits[:, start : start + len(values)].argmax(1)
            scores[f"{name}_accuracy"] = float((predicted == target[:, column]).mean())
            start += len(values)
    return {k: round(v, 4) for k, v in scores.items()}
