"""M3D-VQA style questions from ground truth, in the five M3D categories.

1 Plane, 2 Phase, 3 Organ, 4 Abnormality, 5 Location. Each question is usable closed (four
choices, the answer at a uniformly random letter, distractors drawn from the same answer pool as
real answers so no choice is a give-away), open (answer text only) or as yes/no. Questions whose
answer would be ambiguous for a case (two cysts in different organs and "which organ has the
cyst?") are not asked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .case import PHASES, PLANES, SITE_NAMES, Finding, PhantomCase
from .sampling import CATALOGUE

CATEGORY = {1: "Plane", 2: "Phase", 3: "Organ", 4: "Abnormality", 5: "Location"}
LETTERS = ("A", "B", "C", "D")

PLANE_ANSWER = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
PHASE_ANSWER = {"non-contrast": "Non-contrast", "arterial": "Arterial phase", "portal venous": "Portal venous phase",
                "delayed": "Delayed phase"}
KIND_ANSWER = {"cyst": "Cyst", "mass": "Solid mass", "calcification": "Calcification", "haemorrhage": "Haemorrhage",
               "enlargement": "Enlargement", "effusion": "Effusion"}
KIND_NOUN = {"cyst": "cyst", "mass": "mass", "calcification": "calcification", "haemorrhage": "haemorrhage",
             "effusion": "fluid collection"}

PLURAL = {"mass": "masses", "haemorrhage": "haemorrhages"}
PLANE_Q = ("In which plane is this CT image displayed?", "Which imaging plane is shown?",
           "What is the orientation of this scan?")
PHASE_Q = ("Which contrast phase is this CT scan?", "In which phase was this CT acquired?",
           "What is the contrast phase of this image?")
ORGAN_Q = {
    "cyst": ("Which organ contains the cyst?", "In which organ is the cystic lesion?"),
    "mass": ("Which organ contains the solid mass?", "Which organ harbours the mass?"),
    "calcification": ("Which organ contains the calcification?", "In which organ is the calcified lesion?"),
    "haemorrhage": ("Which organ shows haemorrhage?", "In which organ is the haematoma?"),
    "enlargement": ("Which organ is enlarged?", "Which structure is abnormally large?"),
    "effusion": ("Which space contains the fluid collection?", "Where has fluid accumulated?"),
}
ABNORMALITY_Q = ("What abnormality is seen in the {where}?", "What is the finding in the {where}?",
                 "Which abnormality does the {where} show?")
LOCATION_Q = ("Where {be} the {noun} located?", "What is the location of the {noun}?", "Where {be} the {noun}?")

#: Organs whose abnormality question is not asked: they have one or two possible findings only,
#: so the question text alone would give the answer away.
NO_ABNORMALITY_Q = {"lateral ventricles", "heart", "pleural space", "pericardium", "peritoneal cavity"}


@dataclass
class QA:
    question_type: int
    question: str
    answer: str
    pool: tuple[str, ...]  # plausible answers the distractors are drawn from

    def closed(self, rng: random.Random) -> tuple[list[str], str]:
        """Four choices (answer at a uniformly random position) and the answer letter."""
        others = [p for p in dict.fromkeys(self.pool) if p != self.answer]
        distractors = rng.sample(others, 3)
        position = rng.randrange(4)
        choices = distractors[:position] + [self.answer] + distractors[position:]
        return choices, LETTERS[position]


def _organ_answer(organ: str) -> str:
    return organ[0].upper() + organ[1:]


def _location_answer(site: str) -> str:
    name = SITE_NAMES.get(site, site)
    return name[0].upper() + name[1:]


def _abnormality_where(f: Finding) -> str:
    if f.organ in ("kidney", "lung"):
        return f"{f.side} {f.organ}"
    return f.organ


def _organ_pool(kind: str) -> tuple[str, ...]:
    organs = [_organ_answer(o) for (k, o) in CATALOGUE if k == kind]
    extra = ["Liver", "Kidney", "Spleen", "Pancreas", "Lung", "Brain", "Heart"]
    return tuple(dict.fromkeys(organs + extra))


def _location_pool(kind: str) -> tuple[str, ...]:
    sites = [s for (k, o), v in CATALOGUE.items() if k == kind for s in v[1]]
    return tuple(dict.fromkeys(_location_answer(s) for s in sites))


ALL_KIND_ANSWERS = tuple(KIND_ANSWER[k] for k in ("cyst", "mass", "calcification", "haemorrhage", "enlargement"))


def questions(case: PhantomCase, rng: random.Random) -> list[QA]:
    """Closed/open questions for a case: plane, phase and per-finding organ/abnormality/location."""
    out = [
        QA(1, rng.choice(PLANE_Q), PLANE_ANSWER[case.plane], tuple(PLANE_ANSWER.values()) + ("Oblique",)),
        QA(2, rng.choice(PHASE_Q), PHASE_ANSWER[case.phase], tuple(PHASE_ANSWER.values())),
    ]
    kinds = [f.kind for f in case.findings]
    for f in case.findings:
        if kinds.count(f.kind) == 1:
            out.append(QA(3, rng.choice(ORGAN_Q[f.kind]), _organ_answer(f.organ), _organ_pool(f.kind)))
        where = _abnormality_where(f)
        same_place = [g for g in case.findings if _abnormality_where(g) == where]
        if f.organ not in NO_ABNORMALITY_Q and f.kind != "effusion" and len(same_place) == 1:
            out.append(QA(4, rng.choice(ABNORMALITY_Q).format(where=where), KIND_ANSWER[f.kind], ALL_KIND_ANSWERS))
        if f.kind != "enlargement" and kinds.count(f.kind) == 1:
            noun = KIND_NOUN[f.kind]
            if f.count > 1:
                noun = PLURAL.get(noun, noun + "s")
            be = "are" if f.count > 1 else "is"
            out.append(QA(5, rng.choice(LOCATION_Q).format(noun=noun, be=be), _location_answer(f.site), _location_pool(f.kind)))
    return out


def yes_no_questions(case: PhantomCase, rng: random.Random) -> list[tuple[int, str, str]]:
    """(question type, question, "Yes"/"No"), balanced between yes and no."""
    out = []
    plane = case.plane if rng.random() < 0.5 else rng.choice([p for p in PLANES if p != case.plane])
    out.append((1, f"Is this an {plane} image?" if plane == "axial" else f"Is this a {plane} image?",
                "Yes" if plane == case.plane else "No"))
    phase = case.phase if rng.random() < 0.5 else rng.choice([p for p in PHASES if p != case.phase])
    phrase = "without intravenous contrast" if phase == "non-contrast" else f"in the {phase} phase"
    out.append((2, f"Was this scan acquired {phrase}?", "Yes" if phase == case.phase else "No"))
    present = {(f.kind, f.site) for f in case.findings}
    region_entries = [(k, o, s) for (k, o), v in CATALOGUE.items() if v[0] == case.region and k not in ("enlargement", "effusion")
                      for s in v[1]]
    truths = [f for f in case.findings if f.kind not in ("enlargement", "effusion")]
    if truths and rng.random() < 0.5:
        f = rng.choice(truths)
        out.append((4, f"Is there a {KIND_NOUN[f.kind]} in the {f.location}?", "Yes"))
    else:
        absent = [(k, s) for k, o, s in region_entries if (k, s) not in present
                  and not any(g.site == s for g in case.findings)]
        k, s = rng.choice(absent)
        out.append((4, f"Is there a {KIND_NOUN[k]} in the {SITE_NAMES[s]}?", "No"))
    enlargeable = [o for (k, o), v in CATALOGUE.items() if k == "enlargement" and v[0] == case.region]
    organ = rng.choice(enlargeable)
    big = any(f.kind == "enlargement" and f.organ == organ for f in case.findings)
    out.append((3, f"Is the {'heart' if organ == 'heart' else organ} enlarged?" if organ != "lateral ventricles"
                else "Are the lateral ventricles enlarged?", "Yes" if big else "No"))
    return out
