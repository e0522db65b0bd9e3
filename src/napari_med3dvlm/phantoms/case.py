"""Ground truth of one phantom: what was scanned and what is abnormal.

Every sentence of a phantom report and every VQA answer is derived from a `PhantomCase`, and the
renderer paints exactly these findings, so text and image can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

REGIONS = ("head", "chest", "abdomen")
PHASES = ("non-contrast", "arterial", "portal venous", "delayed")
PLANES = ("axial", "coronal", "sagittal")

#: Finding kinds; "enlargement" and "effusion" are organ-level, the others are focal lesions.
FOCAL_KINDS = ("cyst", "mass", "calcification", "haemorrhage")
KINDS = FOCAL_KINDS + ("enlargement", "effusion")
SEVERITIES = ("small", "moderate", "large")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    organ: str  # "liver", "kidney", "lung", "brain", "pleural space", ...
    site: str  # key into the region's site table: "right lobe", "left kidney", "right upper lobe"...
    side: str | None = None  # "right", "left", "bilateral" or None (midline / unpaired organ)
    size_cm: float | None = None  # largest lesion diameter, or organ length for enlargement
    count: int = 1
    severity: str | None = None  # effusions: small / moderate / large

    @property
    def location(self) -> str:
        """Plain-language location, as a radiologist would name it ("left kidney")."""
        return SITE_NAMES.get(self.site, self.site)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhantomCase:
    case_id: str
    seed: int
    region: str
    phase: str
    plane: str
    findings: list[Finding] = field(default_factory=list)
    scale: float = 1.0  # body size factor

    @property
    def is_normal(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        d = asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PhantomCase":
        d = dict(d)
        d["findings"] = [Finding(**f) for f in d.get("findings", [])]
        return cls(**d)


#: How each site is said in text (sites double as stable keys for the renderer).
SITE_NAMES = {
    # abdomen
    "liver right lobe": "right lobe of the liver",
    "liver left lobe": "left lobe of the liver",
    "liver": "liver",
    "spleen": "spleen",
    "pancreas head": "head of the pancreas",
    "pancreas tail": "tail of the pancreas",
    "right kidney": "right kidney",
    "left kidney": "left kidney",
    "peritoneum": "peritoneal cavity",
    # chest
    "right upper lobe": "right upper lobe",
    "right middle lobe": "right middle lobe",
    "right lower lobe": "right lower lobe",
    "left upper lobe": "left upper lobe",
    "left lower lobe": "left lower lobe",
    "right pleura": "right pleural space",
    "left pleura": "left pleural space",
    "both pleurae": "both pleural spaces",
    "heart": "heart",
    "pericardium": "pericardium",
    # head
    "right frontal": "right frontal lobe",
    "left frontal": "left frontal lobe",
    "right parietal": "right parietal lobe",
    "left parietal": "left parietal lobe",
    "right temporal": "right temporal lobe",
    "left temporal": "left temporal lobe",
    "right occipital": "right occipital lobe",
    "left occipital": "left occipital lobe",
    "ventricles": "lateral ventricles",
}
