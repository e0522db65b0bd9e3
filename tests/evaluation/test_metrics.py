"""Metric code against values computed by hand on tiny examples."""

import math

import numpy as np
import pytest

from training.evaluation import (
    answer_prior_baseline,
    blanked,
    bleu1,
    closed_accuracy,
    closed_correct,
    meteor,
    recall_at_k,
    retrieval_metrics,
    rouge1,
    text_metrics,
    to_markdown,
)


def test_recall_at_k_on_a_3x3_matrix():
    # rows: queries; the right answer is the diagonal
    s = np.array([[0.9, 0.1, 0.0],   # rank 1
                  [0.8, 0.5, 0.1],   # rank 2
                  [0.7, 0.6, 0.2]])  # rank 3
    assert recall_at_k(s, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    # columns as queries (text -> image): col0 rank1, col1 rank2 (0.6 > 0.5), col2 rank1
    assert recall_at_k(s.T, (1, 2)) == {1: pytest.approx(2 / 3), 2: 1.0}


def test_ties_do_not_count_as_hits():
    assert recall_at_k(np.ones((4, 4)), (1,))[1] == pytest.approx(1 / 4)


def test_retrieval_metrics_normalises_and_caps_n():
    img = np.eye(3) * 5.0
    txt = np.eye(3)
    out = retrieval_metrics(img, txt, sizes=(2, 100))
    assert set(out) == {"N=2", "N=3"}
    assert out["N=3"]["IR@1"] == 1.0 and out["N=3"]["TR@1"] == 1.0


def test_bleu1_by_hand():
    # 3 of 4 hypothesis unigrams match; brevity penalty exp(1 - 6/4)
    expected = 0.75 * math.exp(1 - 6 / 4)
    assert bleu1("the liver is enlarged", "the liver is normal in size") == pytest.approx(expected, rel=1e-6)
    assert bleu1("", "anything") == 0.0
    assert bleu1("no ascites", "no ascites") == pytest.approx(1.0)


def test_rouge1_by_hand():
    # overlap 3; precision 3/4, recall 3/6 -> F = 2 * .75 * .5 / 1.25
    assert rouge1("the liver is enlarged", "the liver is normal in size") == pytest.approx(0.6)
    assert rouge1("Cyst.", "cyst") == pytest.approx(1.0)  # case and punctuation ignored


def test_meteor_uses_wordnet_offline():
    assert meteor("a cyst in the liver", "a cyst in the liver") > 0.99
    # "cysts" matches "cyst" through WordNet's stemmer, so METEOR beats plain unigram overlap
    stem = meteor("two cysts in the kidney", "two cyst in the kidney")
    assert stem > 0.9
    assert meteor("", "a cyst") == 0.0


def test_text_metrics_average_per_sample():
    preds = ["no ascites", "the liver is enlarged"]
    refs = ["no ascites", "the liver is normal in size"]
    out = text_metrics(preds, refs, metrics=("bleu1", "rouge1"))
    assert out["n"] == 2
    assert out["rouge1"] == pytest.approx((1.0 + 0.6) / 2)
    assert out["bleu1"] == pytest.approx((1.0 + 0.75 * math.exp(-0.5)) / 2)


@pytest.mark.slow
def test_bertscore_with_the_local_minilm():
    out = text_metrics(["a cyst in the liver", "a cyst in the liver"],
                       ["a cyst in the liver", "the heart is normal"], metrics=("bertscore",))
    from training.evaluation.text_metrics import bertscore

    same, different = bertscore(["a cyst in the liver"] * 2, ["a cyst in the liver", "the heart is normal"])
    assert same == pytest.approx(1.0, abs=1e-4) and different < same
    assert out["bertscore"] == pytest.approx((same + different) / 2, abs=1e-5)


def test_closed_vqa_scoring_follows_the_reference():
    assert closed_correct("B. Liver", "B") and closed_correct("The answer is C. Axial", "C")
    assert not closed_correct("B Liver", "B") and not closed_correct("A. Spleen", "B")
    acc = closed_accuracy(["A. x", "B. y", "C. z", "A. w"], ["A", "A", "C", "D"], [1, 1, 3, 3])
    assert acc["accuracy"] == {"Plane": 0.5, "Organ": 0.5, "overall": 0.5}


def test_answer_prior_baseline_by_hand():
    train = [
        {"question": "Which plane?", "answer": "Axial", "question_type": 1},
        {"question": "Which plane?", "answer": "Axial", "question_type": 1},
        {"question": "Which plane?", "answer": "Coronal", "question_type": 1},
        {"question": "Which organ?", "answer": "Liver", "question_type": 3},
    ]
    test = [
        {"question": "Which plane?", "answer": "Axial", "question_type": 1,
         "choices": ["Coronal", "Axial", "Sagittal", "Oblique"], "answer_choice": "B"},
        {"question": "Which plane?", "answer": "Sagittal", "question_type": 1,
         "choices": ["Sagittal", "Coronal", "Axial", "Oblique"], "answer_choice": "A"},
        {"question": "Unseen organ question?", "answer": "Spleen", "question_type": 3,
         "choices": ["Spleen", "Liver", "Kidney", "Lung"], "answer_choice": "A"},
    ]
    out = answer_prior_baseline(train, test)
    assert out["closed_accuracy"]["Plane"] == 0.5  # picks Axial both times
    assert out["closed_accuracy"]["Organ"] == 0.0  # falls back to the category: Liver
    assert out["open_exact_match"]["overall"] == pytest.approx(1 / 3)


def test_blanked_predictor_sees_zeros():
    import torch

    seen = []
    blind = blanked(lambda image, prompt: seen.append(float(image.abs().sum())) or "ok")
    assert blind(torch.ones(1, 2, 2, 2), "q") == "ok" and seen == [0.0]


def test_markdown_table_lists_every_block():
    results = {
        "retrieval": {"N=3": {"IR@1": 1.0, "TR@1": 0.5}},
        "report": {"model": {"bleu1": 0.5, "rouge1": 0.25, "meteor": 0.1, "bertscore": 0.9, "n": 3}},
        "vqa_closed": {"model": {"accuracy": {"overall": 0.8, "Plane": 1.0}}},
        "answer_prior": {"closed_accuracy": {"overall": 0.25}},
    }
    md = to_markdown(results)
    assert "| 3 | 100.0 | 50.0 |" in md
    assert "| model | 50.0 | 25.0 | 10.0 | 90.0 | 3 |" in md
    assert "| answer prior | 25.0 |" in md
