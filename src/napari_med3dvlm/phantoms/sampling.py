"""Drawing a `PhantomCase` from a seed.

The first finding is drawn kind-first, then organ uniformly among the organs that can host that
kind (which fixes the body region). This keeps "which organ has the cyst?" and "what is wrong with
the liver?" from being answerable by the question text alone: the answer-prior baseline of the
VQA stays near chance.
"""

from __future__ import annotations

import numpy as np

from .case import KINDS, PHASES, PLANES, REGIONS, SEVERITIES, Finding, PhantomCase

BRAIN_SITES = tuple(f"{s} {lobe}" for lobe in ("frontal", "parietal", "temporal", "occipital") for s in ("right", "left"))
LUNG_SITES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")

#: (kind, organ) -> (region, sites, size range in cm or None, max count)
CATALOGUE: dict[tuple[str, str], tuple[str, tuple[str, ...], tuple[float, float] | None, int]] = {
    ("cyst", "brain"): ("head", BRAIN_SITES, (2.5, 5.0), 1),
    ("mass", "brain"): ("head", BRAIN_SITES, (2.5, 5.0), 2),
    ("calcification", "brain"): ("head", BRAIN_SITES, (2.0, 3.0), 2),
    ("haemorrhage", "brain"): ("head", BRAIN_SITES, (3.0, 5.5), 1),
    ("enlargement", "lateral ventricles"): ("head", ("ventricles",), None, 1),
    ("cyst", "lung"): ("chest", LUNG_SITES, (2.5, 5.5), 2),
    ("mass", "lung"): ("chest", LUNG_SITES, (2.5, 6.5), 3),
    ("calcification", "lung"): ("chest", LUNG_SITES, (2.0, 3.0), 3),
    ("haemorrhage", "lung"): ("chest", LUNG_SITES, (3.0, 5.5), 1),
    ("effusion", "pleural space"): ("chest", ("right pleura", "left pleura", "both pleurae"), None, 1),
    ("effusion", "pericardium"): ("chest", ("pericardium",), None, 1),
    ("enlargement", "heart"): ("chest", ("heart",), (16.0, 19.0), 1),
    ("cyst", "liver"): ("abdomen", ("liver right lobe", "liver left lobe"), (2.5, 7.0), 3),
    ("mass", "liver"): ("abdomen", ("liver right lobe", "liver left lobe"), (2.5, 7.0), 3),
    ("calcification", "liver"): ("abdomen", ("liver right lobe", "liver left lobe"), (2.0, 3.0), 2),
    ("haemorrhage", "liver"): ("abdomen", ("liver right lobe", "liver left lobe"), (3.0, 6.0), 1),
    ("enlargement", "liver"): ("abdomen", ("liver",), (20.0, 24.0), 1),
    ("cyst", "kidney"): ("abdomen", ("right kidney", "left kidney"), (2.5, 5.0), 2),
    ("mass", "kidney"): ("abdomen", ("right kidney", "left kidney"), (2.5, 5.5), 1),
    ("calcification", "kidney"): ("abdomen", ("right kidney", "left kidney"), (2.0, 2.5), 2),
    ("haemorrhage", "kidney"): ("abdomen", ("right kidney", "left kidney"), (3.0, 5.0), 1),
    ("cyst", "spleen"): ("abdomen", ("spleen",), (2.5, 5.0), 2),
    ("mass", "spleen"): ("abdomen", ("spleen",), (2.5, 5.0), 2),
    ("calcification", "spleen"): ("abdomen", ("spleen",), (2.0, 2.5), 2),
    ("haemorrhage", "spleen"): ("abdomen", ("spleen",), (3.0, 5.0), 1),
    ("enlargement", "spleen"): ("abdomen", ("spleen",), (15.0, 19.0), 1),
    ("cyst", "pancreas"): ("abdomen", ("pancreas head", "pancreas tail"), (2.5, 4.5), 1),
    ("mass", "pancreas"): ("abdomen", ("pancreas head", "pancreas tail"), (2.5, 4.5), 1),
    ("effusion", "peritoneal cavity"): ("abdomen", ("peritoneum",), None, 1),
}

NORMAL_FRACTION = 0.10
#: Number of findings in an abnormal case: 1, 2 or 3.
FINDING_COUNT_PROBS = (0.55, 0.33, 0.12)


def _side(site: str) -> str | None:
    if site.startswith("right"):
        return "right"
    if site.startswith("left"):
        return "left"
    if site == "both pleurae":
        return "bilateral"
    return None


def draw_technique(rng: np.random.Generator) -> tuple[str, str, float]:
    """(contrast phase, acquisition plane, body scale) of a case."""
    phase = PHASES[rng.integers(len(PHASES))]
    plane = PLANES[rng.integers(len(PLANES))]
    return phase, plane, float(rng.uniform(0.93, 1.07))


def draw_finding(rng: np.random.Generator, kind: str, organ: str) -> Finding:
    region, sites, size_range, max_count = CATALOGUE[(kind, organ)]
    site = sites[rng.integers(len(sites))]
    size = None
    if size_range is not None:
        steps = int(round((size_range[1] - size_range[0]) / 0.5))
        size = float(size_range[0] + 0.5 * rng.integers(steps + 1))
    count = int(rng.integers(1, max_count + 1))
    severity = SEVERITIES[rng.integers(len(SEVERITIES))] if kind == "effusion" else None
    return Finding(kind=kind, organ=organ, site=site, side=_side(site), size_cm=size, count=count, severity=severity)


def _organs_for(kind: str, region: str | None = None) -> list[str]:
    return [o for (k, o), v in CATALOGUE.items() if k == kind and (region is None or v[0] == region)]


def sample_case(seed: int, case_id: str | None = None) -> PhantomCase:
    """A reproducible random case: the same seed always gives the same ground truth."""
    rng = np.random.default_rng(seed)
    phase, plane, scale = draw_technique(rng)
    findings: list[Finding] = []
    if rng.random() < NORMAL_FRACTION:
        region = REGIONS[rng.integers(len(REGIONS))]
    else:
        kind = KINDS[rng.integers(len(KINDS))]
        organs = _organs_for(kind)
        first = draw_finding(rng, kind, organs[rng.integers(len(organs))])
        region = CATALOGUE[(first.kind, first.organ)][0]
        findings.append(first)
        wanted = int(rng.choice([1, 2, 3], p=FINDING_COUNT_PROBS))
        attempts = 0
        while len(findings) < wanted and attempts < 20:
            attempts += 1
            kind = KINDS[rng.integers(len(KINDS))]
            organs = _organs_for(kind, region)
            if not organs:
                continue
            candidate = draw_finding(rng, kind, organs[rng.integers(len(organs))])
            if not compatible(candidate, findings):
                continue
            findings.append(candidate)
    return PhantomCase(
        case_id=case_id or f"{seed:06d}", seed=int(seed), region=region, phase=phase, plane=plane,
        findings=findings, scale=scale,
    )


def compatible(new: Finding, existing: list[Finding]) -> bool:
    """One finding per organ+kind, no lesions in an organ already marked enlarged or the reverse
    (keeps each organ's abnormality unambiguous), one effusion of each kind."""
    for f in existing:
        if f.organ == new.organ and (f.kind == new.kind or "enlargement" in (f.kind, new.kind)):
            return False
        if f.site == new.site:
            return False
    return True
