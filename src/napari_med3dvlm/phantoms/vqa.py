"""M3D-VQA style questions from ground truth, in the five M3D categories.

1 Plane, 2 Phase, 3 Organ, 4 Abnormality, 5 Location. Each question is usable closed (four
choices, the answer at a uniformly random letter), open (answer text only) or as yes/no.

Distractors are real answers to the same question with about the same prior probability: the
possible answers are sorted by how often the generator produces them and cut into groups of four,
and the choices are the answer's group. A blind guesser that picks the most frequent answer among
the choices is then near 25 %, and no choice is a give-away because it never occurs. Questions whose
answer would be ambiguous for a case (two cysts in different organs and "which organ has the
cyst?") are not asked.
"""

from __future__ import annotations

import bisect
import functools
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
NO_ABNORMALITY_Q = {"lateral ventricles", "heart", "pleural space", "pericardium", "peritoneal cavity", "pancreas"}


@dataclass
class QA:
    question_type: int
    question: str
    answer: str
    pool: dict[str, float]  # every possible answer -> 1, padding (never right) -> 0
    key: tuple = ()  # what the question text reveals: answers are ranked by frequency per key

    def closed(self, rng: random.Random) -> tuple[list[str], str]:
        """Four choices (answer at a uniformly random position) and the answer letter."""
        choices = self._choice_set(rng)
        distractors = [a for a in choices if a != self.answer]
        rng.shuffle(distractors)
        position = rng.randrange(4)
        choices = distractors[:position] + [self.answer] + distractors[position:]
        return choices, LETTERS[position]

    def _choice_set(self, rng: random.Random) -> list[str]:
        """Four answers such that, given the set, each member is equally likely to be right.

        Systematic sampling: possible answers are laid end to end on [0, 1) with lengths equal to
        their prior probability, and the set is whatever four points 1/4 apart hit. Every set
        then contains the true answer with probability 4 p(answer), so the answer is uniform
        within its set and a blind guesser that knows the priors scores 25 %. When an answer is
        more likely than 1/4 (three planes), all possible answers are offered with padding.
        """
        prior = answer_prior().get(self.key, {})
        counts = {a: prior.get(a, 0.0) + (1.0 if self.pool.get(a, 0.0) > 0 else 0.0) for a in self.pool}  # add-one
        counts[self.answer] = max(counts.get(self.answer, 0.0), 1.0)
        total = sum(counts.values())
        probs = {a: c / total for a, c in counts.items() if c > 0}
        if len(probs) < 4 or max(probs.values()) > 0.25:
            ranked = sorted(probs, key=lambda a: (-probs[a], a))[:4]
            if self.answer not in ranked:
                ranked = ranked[:3] + [self.answer]
            padding = [a for a in sorted(self.pool) if a not in ranked]
            return ranked + padding[: 4 - len(ranked)]
        names = sorted(probs)
        starts, edge = [], 0.0
        for name in names:
            starts.append(edge)
            edge += probs[name]
        mine = names.index(self.answer)
        point = (starts[mine] + rng.random() * probs[self.answer]) % 0.25
        chosen = []
        for k in range(4):
            t = point + 0.25 * k
            index = min(bisect.bisect_right(starts, t) - 1, len(names) - 1)
            chosen.append(names[index])
        if self.answer not in chosen or len(set(chosen)) < 4:  # rounding at an interval edge
            chosen = [self.answer] + [a for a in dict.fromkeys(chosen) if a != self.answer]
            chosen += [a for a in names if a not in chosen][: 4 - len(chosen)]
        return chosen


def _organ_answer(organ: str) -> str:
    return organ[0].upper() + organ[1:]


def _location_answer(site: str) -> str:
    name = SITE_NAMES.get(site, site)
    return name[0].upper() + name[1:]


def _abnormality_where(f: Finding) -> str:
    if f.organ in ("kidney", "lung"):
        return f"{f.side} {f.organ}"
    return f.organ


#: Never-correct but plausible answers used only to make up four choices.
PADDING = ("Mediastinum", "Gallbladder", "Adrenal gland", "Bladder")


def _padded(weights: dict[str, float]) -> dict[str, float]:
    for extra in PADDING:
        if len(weights) >= 4:
            break
        weights.setdefault(extra, 0.0)
    return weights


def _organs_for(kind: str) -> list[str]:
    return [o for (k, o) in CATALOGUE if k == kind]


def _organ_pool(kind: str) -> dict[str, float]:
    return _padded({_organ_answer(o): 1.0 for o in _organs_for(kind)})


def _location_pool(kind: str) -> dict[str, float]:
    sites = [site for organ in _organs_for(kind) for site in CATALOGUE[(kind, organ)][1]]
    return _padded({_location_answer(site): 1.0 for site in sites})


def _abnormality_pool(organ: str) -> dict[str, float]:
    """The organ's possible findings; the other kinds pad the choices (never right here)."""
    weights = {KIND_ANSWER[k]: 1.0 for (k, o) in CATALOGUE if o == organ and k != "effusion"}
    for k in ("cyst", "mass", "calcification", "haemorrhage", "enlargement"):
        weights.setdefault(KIND_ANSWER[k], 0.0)
    return weights


def questions(case: PhantomCase, rng: random.Random) -> list[QA]:
    """Closed/open questions for a case: plane, phase and per-finding organ/abnormality/location."""
    out = [
        QA(1, rng.choice(PLANE_Q), PLANE_ANSWER[case.plane], {**dict.fromkeys(PLANE_ANSWER.values(), 1.0), "Oblique": 0.0},
           key=(1,)),
        QA(2, rng.choice(PHASE_Q), PHASE_ANSWER[case.phase], dict.fromkeys(PHASE_ANSWER.values(), 1.0), key=(2,)),
    ]
    kinds = [f.kind for f in case.findings]
    for f in case.findings:
        if kinds.count(f.kind) == 1:
            out.append(QA(3, rng.choice(ORGAN_Q[f.kind]), _organ_answer(f.organ), _organ_pool(f.kind),
                          key=(3, f.kind)))
        where = _abnormality_where(f)
        same_place = [g for g in case.findings if _abnormality_where(g) == where]
        if f.organ not in NO_ABNORMALITY_Q and f.kind != "effusion" and len(same_place) == 1:
            out.append(QA(4, rng.choice(ABNORMALITY_Q).format(where=where), KIND_ANSWER[f.kind],
                          _abnormality_pool(f.organ), key=(4, where)))
        if f.kind != "enlargement" and kinds.count(f.kind) == 1:
            noun = KIND_NOUN[f.kind]
            if f.count > 1:
                noun = PLURAL.get(noun, noun + "s")
            be = "are" if f.count > 1 else "is"
            out.append(QA(5, rng.choice(LOCATION_Q).format(noun=noun, be=be), _location_answer(f.site),
                          _location_pool(f.kind), key=(5, f.kind, f.count > 1)))
    return out


@functools.lru_cache(maxsize=1)
def answer_prior(cases: int = 20000) -> dict[tuple, dict[str, float]]:
    """How many times the generator gives each answer per question key in a fixed simulated set of
    cases (deterministic; about a second, once per process)."""
    from .sampling import sample_case

    counts: dict[tuple, dict[str, float]] = {}
    rng = random.Random(0)
    for seed in range(10**9, 10**9 + cases):
        for qa in questions(sample_case(seed), rng):
            table = counts.setdefault(qa.key, {})
            table[qa.answer] = table.get(qa.answer, 0.0) + 1.0
    return counts


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
    organs = sorted({o for (k, o), v in CATALOGUE.items() if v[0] == case.region})
    abnormal = sorted({f.organ for f in case.findings})
    normal = [o for o in organs if o not in abnormal]
    if abnormal and (rng.random() < 0.5 or not normal):
        organ, answer = rng.choice(abnormal), "Yes"
    else:
        organ, answer = rng.choice(normal), "No"
    verb = "Do" if organ in ("lateral ventricles",) else "Does"
    out.append((3, f"{verb} the {organ} show an abnormality?", answer))
    kinds = [f.kind for f in truths]
    located = [f for f in truths if kinds.count(f.kind) == 1]
    if located:
        f = rng.choice(located)
        sites = [s for (k, o), v in CATALOGUE.items() if k == f.kind and v[0] == case.region for s in v[1]]
        site = f.site if rng.random() < 0.5 else rng.choice([s for s in sites if s != f.site])
        out.append((5, f"Is the {KIND_NOUN[f.kind]} located in the {SITE_NAMES[site]}?",
                    "Yes" if site == f.site else "No"))
    return out
