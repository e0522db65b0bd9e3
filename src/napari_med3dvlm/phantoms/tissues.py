"""Attenuation in HU per tissue and contrast phase (non-contrast, arterial, portal venous, delayed).

Values are typical adult figures: arteries peak in the arterial phase, the portal vein and liver
in the portal venous phase, the renal collecting system fills with excreted contrast only in the
delayed phase; fluid, fat, air, bone, blood clot and calcium do not enhance.
"""

from __future__ import annotations

from .case import PHASES

TISSUE_HU: dict[str, tuple[float, float, float, float]] = {
    "air": (-1000, -1000, -1000, -1000),
    "lung": (-850, -850, -850, -850),
    "fat": (-100, -100, -100, -100),
    "fluid": (8, 8, 8, 8),  # bile, urine, CSF, simple cysts, effusions
    "csf": (5, 5, 5, 5),
    "muscle": (50, 58, 62, 60),
    "skin": (40, 45, 50, 48),
    "artery": (40, 330, 170, 120),
    "portal vein": (40, 100, 190, 130),
    "systemic vein": (40, 90, 160, 120),
    "liver": (60, 75, 115, 95),
    "spleen": (50, 110, 120, 100),
    "pancreas": (40, 115, 95, 80),
    "kidney cortex": (35, 175, 180, 130),
    "kidney medulla": (35, 70, 165, 140),
    "collecting system": (10, 10, 15, 700),
    "myocardium": (45, 110, 100, 85),
    "bowel wall": (35, 90, 110, 80),
    "grey matter": (38, 42, 45, 43),
    "white matter": (27, 29, 31, 30),
    "cancellous bone": (250, 250, 250, 250),
    "cortical bone": (1100, 1100, 1100, 1100),
    "rib": (650, 650, 650, 650),
    # findings
    "cyst": (6, 6, 6, 6),
    "mass": (30, 150, 75, 62),
    "necrosis": (8, 8, 10, 10),
    "haemorrhage": (75, 75, 75, 75),  # clot
    "serum": (20, 20, 22, 22),  # the thin lower-density rim of a retracting haematoma
    "calcification": (750, 750, 750, 750),
    "oedema": (18, 18, 20, 20),
}


def hu(tissue: str, phase: str) -> float:
    return float(TISSUE_HU[tissue][PHASES.index(phase)])
