"""Reading a report (or an open answer) back into phantom findings, for finding-level scores.

Text metrics (METEOR, BLEU) reward a report that says "a 4.5 cm mass in the spleen" for a volume
with a cyst in the left kidney almost as much as the right one. The field scores reports by the
findings they state (CheXbert / RadGraph F1, GREEN); on phantoms the ground truth is exact, so this
module reads each sentence of a text into ``(kind, site)`` findings in the generator's vocabulary
(`phantoms.case.KINDS`, the site keys of `phantoms.case.SITE_NAMES`) and its technique (region,
phase, plane), and `score_findings` compares them with the cases' ground truth.

Sentences that deny ("No renal mass, cyst or calculus.") or call an organ normal state no finding.
A lesion whose site cannot be read is kept with ``site=None``: it is still a claim, and counts as
a false positive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .case import FOCAL_KINDS, KINDS, SITE_NAMES, PhantomCase
from .sampling import CATALOGUE

#: site key -> organ, as the generator assigns them.
SITE_ORGAN = {site: organ for (_kind, organ), (_r, sites, _s, _n) in CATALOGUE.items() for site in sites}

_LESION_WORDS = {
    "cyst": (r"\bcysts?\b",),
    "mass": (r"\bmass(es)?\b", r"\bsolid lesions?\b"),
    "calcification": (r"\bcalcifications?\b", r"\bcalcified fo(cus|ci)\b"),
    "haemorrhage": (r"\bhaematomas?\b", r"\bhaemorrhages?\b", r"\bhematomas?\b", r"\bhemorrhages?\b"),
}
_ENLARGED = {
    "liver": (r"\bhepatomegaly\b", r"\benlarged liver\b", r"\bliver is enlarged\b"),
    "spleen": (r"\bsplenomegaly\b", r"\benlarged spleen\b", r"\bspleen is enlarged\b"),
    "heart": (r"\bcardiomegaly\b", r"\bheart is enlarged\b", r"\benlarged cardiac\b"),
    "ventricles": (r"\bhydrocephalus\b", r"\bventricles are enlarged\b", r"\benlarged lateral ventricles\b",
                   r"\bdilated lateral ventricles\b"),
}
_NEGATION = re.compile(r"^(no|without)\b|\b(unremarkable|normal|clear|intact|preserved|within normal limits)\b")
_TECHNIQUE = re.compile(r"\b(ct|images?)\b")
_PHASES = (("non-contrast", r"\bnon-contrast\b|\bunenhanced\b"), ("arterial", r"\barterial\b"),
           ("portal venous", r"\bportal venous\b|\bvenous phase\b"), ("delayed", r"\bdelayed\b"))
_REGIONS = (("head", r"\bhead\b|\bbrain\b"), ("chest", r"\bchest\b|\bthorax\b"), ("abdomen", r"\babdomen\b"))
_PLANES = ("axial", "coronal", "sagittal")
#: Lesion sites by their text, longest first ("right lobe of the liver" before "liver").
_SITE_TEXT = sorted(((text, key) for key, text in SITE_NAMES.items() if key in SITE_ORGAN
                     and not key.endswith(("pleura", "pleurae")) and key not in ("peritoneum", "pericardium",
                                                                                   "ventricles", "heart", "liver")),
                    key=lambda item: -len(item[0]))


@dataclass(frozen=True)
class ReadFinding:
    kind: str
    site: str | None

    @property
    def organ(self) -> str | None:
        return SITE_ORGAN.get(self.site) if self.site else None


@dataclass
class ReadReport:
    findings: set[ReadFinding] = field(default_factory=set)
    region: str | None = None
    phase: str | None = None
    plane: str | None = None


def sentences(text: str) -> list[str]:
    """Sentences of a report; decimal points ("3.5 cm") do not end one."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip()) if s.strip()]


def _effusion_site(sentence: str) -> str | None:
    if "pericardial" in sentence or "pericardium" in sentence:
        return "pericardium"
    if "pleural" in sentence:
        if "bilateral" in sentence or "both" in sentence:
            return "both pleurae"
        if re.search(r"\bright\b", sentence):
            return "right pleura"
        if re.search(r"\bleft\b", sentence):
            return "left pleura"
        return None
    if "ascites" in sentence or "free fluid" in sentence or "peritoneal" in sentence:
        return "peritoneum"
    return None


def read_sentence(sentence: str) -> set[ReadFinding]:
    s = sentence.lower().strip()
    if _NEGATION.search(s):
        return set()
    found: set[ReadFinding] = set()
    for site, patterns in _ENLARGED.items():
        if any(re.search(p, s) for p in patterns):
            found.add(ReadFinding("enlargement", site))
    if "effusion" in s or "ascites" in s or "free fluid" in s:
        found.add(ReadFinding("effusion", _effusion_site(s)))
    site = next((key for text, key in _SITE_TEXT if text in s), None)
    for kind, patterns in _LESION_WORDS.items():
        if any(re.search(p, s) for p in patterns):
            found.add(ReadFinding(kind, site))
    return found


def read_report(text: str) -> ReadReport:
    """The findings and technique a report states."""
    out = ReadReport()
    for i, sentence in enumerate(sentences(text)):
        low = sentence.lower()
        if out.plane is None and _TECHNIQUE.search(low) and any(p in low for p in _PLANES):
            out.plane = next(p for p in _PLANES if p in low)
            out.phase = next((name for name, pattern in _PHASES if re.search(pattern, low)), None)
            out.region = next((name for name, pattern in _REGIONS if re.search(pattern, low)), None)
            continue
        out.findings |= read_sentence(sentence)
    return out


def truth_findings(case: PhantomCase | dict) -> set[ReadFinding]:
    if isinstance(case, dict):
        case = PhantomCase.from_dict(case)
    return {ReadFinding(f.kind, f.site) for f in case.findings}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else (1.0 if not fn else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "support": tp + fn}


def score_findings(texts: list[str], cases: list[PhantomCase | dict]) -> dict:
    """Finding-level precision/recall/F1 (micro, per kind, per organ), exact-set accuracy and
    technique accuracy of ``texts`` against the cases' ground truth."""
    counts = {"all": [0, 0, 0], "focal": [0, 0, 0]}
    per_kind = {k: [0, 0, 0] for k in KINDS}
    per_organ: dict[str, list[int]] = {}
    exact = technique = 0
    tech_parts = {"region": 0, "phase": 0, "plane": 0}
    for text, case in zip(texts, cases):
        case = PhantomCase.from_dict(case) if isinstance(case, dict) else case
        read = read_report(text)
        truth = truth_findings(case)
        exact += read.findings == truth
        ok = {"region": read.region == case.region, "phase": read.phase == case.phase, "plane": read.plane == case.plane}
        for key, value in ok.items():
            tech_parts[key] += value
        technique += all(ok.values())
        for finding in read.findings | truth:
            tp, fp = finding in read.findings and finding in truth, finding in read.findings and finding not in truth
            slot = 0 if tp else (1 if fp else 2)
            organ = finding.organ or "unknown site"
            for bucket in (counts["all"], per_kind[finding.kind], per_organ.setdefault(organ, [0, 0, 0])):
                bucket[slot] += 1
            if finding.kind in FOCAL_KINDS:
                counts["focal"][slot] += 1
    n = max(1, len(texts))
    return {
        "n": len(texts),
        "finding": _prf(*counts["all"]),
        "focal": _prf(*counts["focal"]),
        "exact_set": round(exact / n, 4),
        "technique": round(technique / n, 4),
        **{f"technique_{k}": round(v / n, 4) for k, v in tech_parts.items()},
        "per_kind": {k: _prf(*v) for k, v in per_kind.items()},
        "per_organ": {k: _prf(*v) for k, v in sorted(per_organ.items())},
    }
