"""Reports and questions: specific, varied, consistent with ground truth, not guessable blind."""

import random
from collections import Counter

import pytest

from napari_med3dvlm.phantoms import Finding, PhantomCase, sample_case, write_report
from napari_med3dvlm.phantoms.vqa import CATEGORY, questions, yes_no_questions
from training.evaluation.vqa import answer_prior_baseline


def _rows(seeds):
    rows = []
    for seed in seeds:
        case = sample_case(seed)
        rng = random.Random(seed)
        for qa in questions(case, rng):
            choices, letter = qa.closed(rng)
            rows.append({"question": qa.question, "answer": qa.answer, "question_type": qa.question_type,
                         "choices": choices, "answer_choice": letter})
    return rows


def test_report_states_region_phase_plane_and_each_finding():
    case = PhantomCase("x", 7, "abdomen", "arterial", "coronal", [
        Finding("cyst", "kidney", "right kidney", side="right", size_cm=3.5, count=2),
        Finding("effusion", "peritoneal cavity", "peritoneum", severity="moderate"),
    ])
    report = write_report(case).lower()
    assert "coronal" in report and "arterial" in report and "abdomen" in report
    assert "right kidney" in report and "3.5 cm" in report and "two" in report
    assert "moderate" in report and ("ascites" in report or "free fluid" in report)
    assert "no ascites" not in report and "both kidneys are unremarkable" not in report


def test_wording_varies_between_cases_with_the_same_ground_truth():
    base = dict(region="chest", phase="delayed", plane="axial",
                findings=[Finding("mass", "lung", "left upper lobe", side="left", size_cm=4.0)])
    reports = {write_report(PhantomCase(str(s), s, **base)) for s in range(12)}
    assert len(reports) >= 6


def test_reports_single_out_most_cases():
    reports = [write_report(sample_case(s), seed=0) for s in range(300)]
    facts = Counter(tuple(sorted(r.lower().replace(",", "").split())) for r in reports)
    assert len(facts) > 250


def test_closed_questions_have_four_distinct_choices_and_uniform_letters():
    rows = _rows(range(400))
    letters = Counter(r["answer_choice"] for r in rows)
    assert all(len(set(r["choices"])) == 4 and r["answer"] in r["choices"] for r in rows)
    assert all(r["choices"]["ABCD".index(r["answer_choice"])] == r["answer"] for r in rows)
    assert min(letters.values()) / max(letters.values()) > 0.8
    assert {r["question_type"] for r in rows} == set(CATEGORY)


@pytest.mark.slow
def test_answer_prior_baseline_is_near_chance_in_every_category():
    train, test = _rows(range(0, 1500)), _rows(range(10_000, 10_400))
    result = answer_prior_baseline(train, test)
    for category in CATEGORY.values():
        assert result["closed_accuracy"][category] <= 0.36, (category, result["closed_accuracy"])
        assert result["open_exact_match"][category] <= 0.36, (category, result["open_exact_match"])


def test_yes_no_answers_match_ground_truth():
    case = PhantomCase("x", 3, "head", "non-contrast", "sagittal",
                       [Finding("haemorrhage", "brain", "left temporal", side="left", size_cm=4.0)])
    seen = set()
    for seed in range(20):
        for qtype, question, answer in yes_no_questions(case, random.Random(seed)):
            if question == "Is this a sagittal image?" or question == "Was this scan acquired without intravenous contrast?":
                assert answer == "Yes"
            if question == "Is there a haemorrhage in the left temporal lobe?":
                assert answer == "Yes"
            if question == "Does the brain show an abnormality?":
                assert answer == "Yes"
            if question == "Do the lateral ventricles show an abnormality?":
                assert answer == "No"
            if question.startswith("Is the haemorrhage located in the"):
                assert answer == ("Yes" if "left temporal" in question else "No")
            seen.add(qtype)
    assert seen == {1, 2, 3, 4, 5}
    answers = Counter(a for s in range(200) for _, _, a in yes_no_questions(sample_case(s), random.Random(s)))
    assert 0.3 < answers["Yes"] / sum(answers.values()) < 0.7
