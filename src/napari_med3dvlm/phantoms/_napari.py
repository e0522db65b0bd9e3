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


SAMPLE_NAME = "Phantom CT (abdomen, portal venous)"
LABELS_NAME = "Phantom lesions (ground truth)"


def render_sample():
    """The sample's `PhantomImage` (volume, organ and lesion labels)."""
    return render_case(SAMPLE_CASE, slices=96, pixels=256)


def lesion_labels_layer_data(image, volume=None, name: str = LABELS_NAME) -> tuple:
    """(data, kwargs, "labels"): the lesion label map of a rendered phantom on its display grid,
    with the image layer's scale and translate; label i + 1 is finding i, named in ``features``."""
    volume = volume or image.volume
    findings = image.case.findings
    return (
        image.display_finding_labels(),
        {
            "name": name,
            "scale": volume.spacing,
            "translate": volume.origin,
            "opacity": 0.5,
            "blending": "translucent_no_depth",
            "features": {"finding": ["none"] + [f"{f.kind} ({f.location})" for f in findings]},
            "metadata": {"findings": [f.to_dict() for f in findings], "ground_truth": True},
        },
        "labels",
    )


def phantom_ct_sample():
    """Layer data for napari's File > Open Sample menu."""
    from ..io import volume_layer_data

    volume = render_sample().volume
    return [volume_layer_data(volume, name=SAMPLE_NAME)]


def phantom_ct_with_lesions_sample():
    """The sample CT and its lesion label map (ground truth, for comparison) as a Labels layer."""
    from ..io import volume_layer_data

    image = render_sample()
    volume = image.volume
    return [volume_layer_data(volume, name=SAMPLE_NAME), lesion_labels_layer_data(image, volume)]
