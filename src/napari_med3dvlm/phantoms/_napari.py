"""napari sample data: a phantom CT with findings, opened like a file from disk."""

from __future__ import annotations

from .case import Finding, PhantomCase
from .generator import render_case

#: The sample: an abdomen in the portal venous phase with findings in several organs, rendered at
#: a finer grid than the training data so it reads well on screen.
SAMPLE_CASE = PhantomCase(
    case_id="sample",
    seed=2024,
    region="abdomen",
    phase="portal venous",
    plane="axial",
    findings=[
        Finding("cyst", "kidney", "left kidney", side="left", size_cm=3.5, count=1),
        Finding("mass", "liver", "liver right lobe", size_cm=5.0, count=1),
        Finding("effusion", "peritoneal cavity", "peritoneum", severity="small"),
    ],
)


def phantom_ct_sample():
    """Layer data for napari's File > Open Sample menu."""
    from ..io._napari import volume_layer_data

    image = render_case(SAMPLE_CASE, slices=96, pixels=256)
    volume = image.display_volume()
    return [volume_layer_data(volume, name="Phantom CT (abdomen, portal venous)")]
