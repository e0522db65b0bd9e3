"""Synthetic CT phantoms with ground truth, radiology-style reports and M3D-style VQA.

The generator is deterministic (a seed gives the same case, volume, report and questions), fast
enough to write thousands of cases on a laptop CPU, and writes the M3D-Cap / M3D-VQA layouts so the
same loaders read phantom splits and the real data sets.
"""

from .case import KINDS, PHASES, PLANES, REGIONS, Finding, PhantomCase
from .generator import PhantomImage, generate, render_case
from .report import write_report
from .sampling import sample_case

__all__ = [
    "KINDS",
    "PHASES",
    "PLANES",
    "REGIONS",
    "Finding",
    "PhantomCase",
    "PhantomImage",
    "generate",
    "render_case",
    "sample_case",
    "write_report",
]
