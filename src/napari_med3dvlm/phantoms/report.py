"""Radiology-style reports written from ground truth, with varied wording and sentence order.

Every fact a report states (region, phase, plane, each finding's kind, location, size and count)
is painted in the image, and every organ the region shows is either described as abnormal or
given a normal statement, so reports are specific enough to single out their volume.
"""

from __future__ import annotations

import random

from .case import Finding, PhantomCase

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

PHASE_TEXT = {
    "non-contrast": ("non-contrast", "unenhanced", "non-contrast"),
    "arterial": ("arterial phase", "late arterial phase", "arterial phase contrast-enhanced"),
    "portal venous": ("portal venous phase", "portal venous phase contrast-enhanced", "venous phase"),
    "delayed": ("delayed phase", "delayed (excretory) phase", "delayed phase contrast-enhanced"),
}
REGION_TEXT = {"head": ("head", "brain"), "chest": ("chest", "thorax"), "abdomen": ("abdomen", "upper abdomen")}

#: Organs each region shows, with ways to call them normal.
NORMALS = {
    "head": {
        "brain": ("Grey-white matter differentiation is preserved.", "No intracranial haemorrhage, mass or cyst.",
                  "The brain parenchyma is unremarkable."),
        "lateral ventricles": ("The ventricles are normal in size.", "No hydrocephalus.",
                               "Ventricular size is within normal limits."),
        "skull": ("The calvarium is intact.", "No skull fracture.", "Bony calvarium unremarkable."),
    },
    "chest": {
        "lung": ("The lungs are clear.", "No pulmonary nodule, mass or consolidation.", "Clear lungs bilaterally."),
        "pleural space": ("No pleural effusion.", "The pleural spaces are clear.", "No pleural fluid."),
        "heart": ("Heart size is normal.", "Normal cardiac size.", "No cardiomegaly."),
        "pericardium": ("No pericardial effusion.", "The pericardium is unremarkable.", "No pericardial fluid."),
    },
    "abdomen": {
        "liver": ("The liver is normal in size and attenuation.", "No focal liver lesion.", "Unremarkable liver."),
        "spleen": ("The spleen is unremarkable.", "Normal spleen.", "No splenic lesion or splenomegaly."),
        "kidney": ("Both kidneys are unremarkable.", "No renal mass, cyst or calculus.", "Normal kidneys bilaterally."),
        "pancreas": ("The pancreas is unremarkable.", "Normal pancreas.", "No pancreatic lesion."),
        "peritoneal cavity": ("No ascites.", "No free intraperitoneal fluid.", "No free fluid."),
    },
}
#: Which normal-statement key a finding's organ silences.
ORGAN_KEY = {"lateral ventricles": "lateral ventricles", "brain": "brain", "lung": "lung", "pleural space": "pleural space",
             "heart": "heart", "pericardium": "pericardium", "liver": "liver", "spleen": "spleen", "kidney": "kidney",
             "pancreas": "pancreas", "peritoneal cavity": "peritoneal cavity"}

LESION_NOUN = {
    "cyst": (("cyst", "cysts"), ("simple cyst", "simple cysts"), ("well-defined fluid-attenuation cyst", "well-defined fluid-attenuation cysts")),
    "mass": (("mass", "masses"), ("solid enhancing mass", "solid enhancing masses"), ("solid lesion", "solid lesions")),
    "calcification": (("calcification", "calcifications"), ("calcified focus", "calcified foci"), ("dense calcification", "dense calcifications")),
    "haemorrhage": (("haematoma", "haematomas"), ("haemorrhage", "haemorrhages"), ("hyperdense haematoma", "hyperdense haematomas")),
}
ENLARGED = {
    "liver": ("Hepatomegaly, the liver measuring {size} cm craniocaudally.", "The liver is enlarged ({size} cm).",
              "Enlarged liver with a craniocaudal span of {size} cm."),
    "spleen": ("Splenomegaly, the spleen measuring {size} cm.", "The spleen is enlarged at {size} cm.",
               "Enlarged spleen measuring {size} cm in length."),
    "heart": ("Cardiomegaly, transverse cardiac diameter {size} cm.", "The heart is enlarged ({size} cm transverse).",
              "Enlarged cardiac silhouette measuring {size} cm."),
    "lateral ventricles": ("The lateral ventricles are enlarged, in keeping with hydrocephalus.",
                           "Hydrocephalus with dilated lateral ventricles.", "Enlarged lateral ventricles (hydrocephalus)."),
}
EFFUSION = {
    "pleural space": ("{Severity} {side} pleural effusion.", "There is a {severity} {side} pleural effusion.",
                      "{Severity} pleural effusion on the {side_long}."),
    "pericardium": ("{Severity} pericardial effusion.", "There is a {severity} pericardial effusion.",
                    "A {severity} pericardial effusion surrounds the heart."),
    "peritoneal cavity": ("{Severity} ascites.", "There is {severity} ascites.", "{Severity} volume of free fluid in the peritoneal cavity."),
}


def _size(cm: float) -> str:
    return f"{cm:.1f}"


def describe_finding(f: Finding, rng: random.Random) -> str:
    """One sentence for one finding, in one of several phrasings."""
    if f.kind == "enlargement":
        template = rng.choice(ENLARGED[f.organ])
        return template.format(size=_size(f.size_cm) if f.size_cm else "")
    if f.kind == "effusion":
        template = rng.choice(EFFUSION[f.organ])
        side = {"right": "right", "left": "left", "bilateral": "bilateral"}.get(f.side or "", "")
        side_long = {"right": "right", "left": "left", "bilateral": "both sides"}.get(f.side or "", "")
        if f.side == "bilateral" and "on the" in template:
            template = "{Severity} bilateral pleural effusions."
        return template.format(severity=f.severity, Severity=f.severity.capitalize(), side=side, side_long=side_long)
    noun_sg, noun_pl = rng.choice(LESION_NOUN[f.kind])
    where = f.location
    size = _size(f.size_cm)
    if f.count == 1:
        options = (
            f"A {size} cm {noun_sg} in the {where}.",
            f"There is a {noun_sg} in the {where} measuring {size} cm.",
            f"{where[0].upper() + where[1:]}: {noun_sg}, {size} cm.",
        )
    else:
        n = NUMBER_WORDS[f.count]
        options = (
            f"{n.capitalize()} {noun_pl} in the {where}, the largest {size} cm.",
            f"There are {n} {noun_pl} in the {where}, measuring up to {size} cm.",
            f"{where[0].upper() + where[1:]}: {n} {noun_pl}, largest {size} cm.",
        )
    return rng.choice(options)


def technique(case: PhantomCase, rng: random.Random) -> str:
    phase = rng.choice(PHASE_TEXT[case.phase])
    region = rng.choice(REGION_TEXT[case.region])
    plane = case.plane
    options = (
        f"{plane.capitalize()} {phase} CT of the {region}.",
        f"CT {region}, {phase}, {plane} images.",
        f"{phase[0].upper() + phase[1:]} CT images of the {region} in the {plane} plane.",
    )
    return rng.choice(options)


def write_report(case: PhantomCase, seed: int | None = None) -> str:
    """The report for a case; ``seed`` picks the wording (default: the case's own seed)."""
    rng = random.Random(case.seed if seed is None else seed)
    abnormal = [describe_finding(f, rng) for f in case.findings]
    rng.shuffle(abnormal)
    silenced = {ORGAN_KEY[f.organ] for f in case.findings}
    normals = [rng.choice(options) for key, options in NORMALS[case.region].items() if key not in silenced]
    rng.shuffle(normals)
    if case.is_normal and rng.random() < 0.5:
        normals.append(rng.choice(("No acute abnormality.", "Normal study.", "No significant abnormality.")))
    return " ".join([technique(case, rng)] + abnormal + normals)
