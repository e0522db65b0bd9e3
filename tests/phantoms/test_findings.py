"""The finding reader: scores the generator's own reports 1.0, and catches edited ones."""

from __future__ import annotations

import pytest

from napari_med3dvlm.phantoms.case import Finding, PhantomCase
from napari_med3dvlm.phantoms.findings import ReadFinding, read_report, score_findings, sentences
from napari_med3dvlm.phantoms.report import write_report
from napari_med3dvlm.phantoms.sampling import sample_case


def _sample():
    """The plugin's sample case: liver mass, left renal cyst, small ascites."""
    return PhantomCase(
        case_id="sample", seed=1, region="abdomen", phase="portal venous", plane="axial",
        findings=[
            Finding("mass", "liver", "liver right lobe", "right", 5.0),
            Finding("cyst", "kidney", "left kidney", "left", 3.5),
            Finding("effusion", "peritoneal cavity", "peritoneum", None, None, 1, "small"),
        ],
    )


@pytest.mark.slow
def test_generator_reports_score_perfectly_over_many_cases():
    cases = [sample_case(seed) for seed in range(1500)]
    scores = score_findings([write_report(c) for c in cases], cases)
    assert scores["finding"]["f1"] == 1.0 and scores["focal"]["f1"] == 1.0
    assert scores["exact_set"] == 1.0 and scores["technique"] == 1.0
    assert scores["finding"]["support"] > 1500
    assert all(v["f1"] == 1.0 for v in scores["per_kind"].values() if v["support"])


@pytest.mark.parametrize("wording", range(6))
def test_every_wording_of_the_sample_reads_back(wording):
    case = _sample()
    read = read_report(write_report(case, seed=wording))
    assert read.findings == {ReadFinding("mass", "liver right lobe"), ReadFinding("cyst", "left kidney"),
                             ReadFinding("effusion", "peritoneum")}
    assert (read.region, read.phase, read.plane) == ("abdomen", "portal venous", "axial")


def test_a_report_that_invents_findings_scores_zero():
    """The old demo model's report on the sample: every finding wrong, technique right."""
    text = ("Axial portal venous phase CT of the abdomen. There is a solid enhancing mass in the spleen "
            "measuring 4.5 cm. No ascites. No renal mass, cyst or calculus. The liver is normal in size and attenuation.")
    scores = score_findings([text], [_sample()])
    assert scores["finding"]["precision"] == 0.0 and scores["finding"]["recall"] == 0.0
    assert scores["exact_set"] == 0.0 and scores["technique"] == 1.0
    assert scores["per_organ"]["spleen"]["precision"] == 0.0


def test_edits_cost_what_they_should():
    case = _sample()
    report = write_report(case)
    swapped = report.replace("left kidney", "right kidney")
    scores = score_findings([swapped], [case])
    assert scores["finding"]["precision"] == pytest.approx(2 / 3, abs=1e-3)
    assert scores["finding"]["recall"] == pytest.approx(2 / 3, abs=1e-3)
    dropped = " ".join(s for s in sentences(report) if "ascites" not in s.lower() and "fluid" not in s.lower())
    scores = score_findings([dropped], [case])
    assert scores["finding"]["precision"] == 1.0 and scores["finding"]["recall"] == pytest.approx(2 / 3, abs=1e-3)
    assert scores["exact_set"] == 0.0
    wrong_kind = report.replace("cyst", "calcification")
    if wrong_kind != report:
        assert read_report(wrong_kind).findings != read_report(report).findings


def test_a_lesion_without_a_readable_site_is_a_false_positive():
    case = _sample()
    scores = score_findings([write_report(case) + " A 2.0 cm calcification somewhere."], [case])
    assert scores["finding"]["recall"] == 1.0 and scores["finding"]["precision"] == 0.75
    assert "unknown site" in scores["per_organ"]
