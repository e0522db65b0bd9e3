"""The phantom generator: reproducible, CT-like HU, and findings where the report says they are."""

import numpy as np
import pytest

from napari_med3dvlm.phantoms import Finding, PhantomCase, render_case, sample_case, write_report
from napari_med3dvlm.phantoms.anatomy import LABEL
from napari_med3dvlm.phantoms.case import PHASES, PLANES

SMALL = {"slices": 24, "pixels": 64}


def _case(region="abdomen", phase="portal venous", plane="axial", findings=(), seed=3):
    return PhantomCase(case_id="t", seed=seed, region=region, phase=phase, plane=plane, findings=list(findings))


def test_same_seed_gives_the_same_case_volume_and_report():
    a, b = sample_case(123), sample_case(123)
    assert a == b
    assert write_report(a) == write_report(b)
    va, vb = render_case(a, **SMALL).volume.data, render_case(b, **SMALL).volume.data
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(va, render_case(sample_case(124), **SMALL).volume.data) or sample_case(124) == a


def test_volume_is_int16_hu_with_spacing_and_affine():
    image = render_case(_case(), **SMALL)
    v = image.volume
    assert v.data.dtype == np.int16 and v.modality == "CT"
    assert v.data.min() >= -1024 and v.data.max() > 300  # air and bone present
    assert v.affine.shape == (4, 4)
    # the stack's affine is indexed (slice, row, column) like its spacing; the Volume's, as every
    # Volume's, (x, y, z) against a (z, y, x) spacing
    np.testing.assert_allclose(np.linalg.norm(image.stack_affine[:3, :3], axis=0), image.stack_spacing, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v.affine[:3, :3], axis=0), v.spacing[::-1], rtol=1e-5)


def _median_hu(image, organ):
    mask = image.organ_labels == LABEL[organ]
    core = mask.copy()
    # keep voxels away from the organ edge (partial volume)
    from scipy import ndimage

    core = ndimage.binary_erosion(mask, iterations=2)
    values = image.stack[core if core.any() else mask]
    return float(np.median(values))


@pytest.mark.parametrize(
    "region, organ, low, high",
    [
        ("abdomen", "liver", 90, 140),  # portal venous liver
        ("abdomen", "spleen", 95, 145),
        ("chest", "right lung", -900, -800),
        ("abdomen", "bone", 150, 1200),
        ("head", "brain", 20, 50),
        ("head", "ventricles", -5, 20),
    ],
)
def test_organs_have_realistic_hu(region, organ, low, high):
    image = render_case(_case(region=region, seed=5), slices=32, pixels=96)
    assert low <= _median_hu(image, organ) <= high


def test_air_outside_body_and_fat_under_the_skin():
    image = render_case(_case(seed=1), **SMALL)
    outside = image.stack[image.organ_labels == 0]
    assert np.median(outside) < -950
    assert -130 < _median_hu(image, "body") < 50


def test_contrast_phases_change_enhancement():
    """Aorta peaks in the arterial phase, liver in portal venous, the collecting system in delayed."""
    med = {p: render_case(_case(phase=p, seed=2), slices=32, pixels=96) for p in PHASES}

    def vessel_max(image):
        return float(np.percentile(image.stack[image.organ_labels == LABEL["vessel"]], 90))

    assert vessel_max(med["arterial"]) > vessel_max(med["portal venous"]) > vessel_max(med["non-contrast"]) + 50
    liver = {p: _median_hu(im, "liver") for p, im in med.items()}
    assert liver["portal venous"] > liver["arterial"] > liver["non-contrast"]
    pelvis = {p: _median_hu(im, "collecting system") for p, im in med.items()}
    assert pelvis["delayed"] > 300 > 50 > pelvis["non-contrast"]


def test_planes_put_the_stack_axis_first():
    stacks = {p: render_case(_case(plane=p), slices=20, pixels=48).stack for p in PLANES}
    for plane, stack in stacks.items():
        assert stack.shape == (20, 48, 48), plane
    # the coronal stack runs front to back: the spine (bone) sits in the last slices, not the first
    cor = render_case(_case(plane="coronal"), slices=20, pixels=48)
    bone_per_slice = (cor.organ_labels == LABEL["bone"]).sum(axis=(1, 2))
    assert bone_per_slice[12:].sum() > bone_per_slice[:8].sum()


@pytest.mark.parametrize(
    "finding, low, high",
    [
        (Finding("cyst", "kidney", "left kidney", side="left", size_cm=4.0), -10, 25),
        (Finding("calcification", "liver", "liver right lobe", size_cm=2.5), 300, 2000),
        (Finding("haemorrhage", "spleen", "spleen", size_cm=4.0), 50, 85),
        (Finding("mass", "lung", "right lower lobe", side="right", size_cm=4.0), -20, 200),
    ],
)
def test_findings_are_painted_where_the_report_says(finding, low, high):
    region = "chest" if finding.organ == "lung" else "abdomen"
    image = render_case(_case(region=region, findings=[finding], seed=11), slices=32, pixels=96)
    lesion = image.finding_labels == 1
    assert lesion.sum() > 20  # visible: tens of voxels even on a small grid
    assert low <= np.median(image.stack[lesion]) <= high
    host = {"left kidney": "left kidney", "liver right lobe": "liver", "spleen": "spleen",
            "right lower lobe": "right lung"}[finding.site]
    # the lesion lies inside its host organ (organ labels keep the host underneath the lesion)
    inside = np.isin(image.organ_labels[lesion], [LABEL[host], LABEL["collecting system"], LABEL["vessel"]])
    assert inside.mean() > 0.8
    # and on the side the text names: patient left = high x (last axis for axial)
    xs = np.nonzero(lesion)[2]
    if finding.side == "left":
        assert xs.mean() > lesion.shape[2] / 2
    elif finding.side == "right":
        assert xs.mean() < lesion.shape[2] / 2
    report = write_report(image.case)
    assert finding.location in report.lower() and f"{finding.size_cm:.1f} cm" in report


def test_lesion_size_matches_the_reported_diameter():
    f = Finding("cyst", "liver", "liver right lobe", size_cm=6.0)
    image = render_case(_case(findings=[f], seed=4, plane="axial"), slices=48, pixels=128)
    lesion = image.finding_labels == 1
    _, ys, xs = np.nonzero(lesion)
    spacing = image.stack_spacing
    extent_mm = max((ys.max() - ys.min() + 1) * spacing[1], (xs.max() - xs.min() + 1) * spacing[2])
    assert 45 <= extent_mm <= 66


def test_effusion_and_enlargement_are_labelled():
    effusion = Finding("effusion", "pleural space", "right pleura", side="right", severity="large")
    image = render_case(_case(region="chest", findings=[effusion], seed=6), slices=32, pixels=96)
    fluid = image.finding_labels == 1
    assert fluid.sum() > 500 and -10 < np.median(image.stack[fluid]) < 30
    normal = render_case(_case(region="abdomen", seed=6), slices=32, pixels=96)
    big = render_case(_case(region="abdomen", findings=[Finding("enlargement", "spleen", "spleen", size_cm=18.0)],
                            seed=6), slices=32, pixels=96)
    assert (big.organ_labels == LABEL["spleen"]).sum() > 1.5 * (normal.organ_labels == LABEL["spleen"]).sum()


def test_sampler_mix():
    cases = [sample_case(s) for s in range(600)]
    normal = sum(c.is_normal for c in cases) / len(cases)
    assert 0.05 < normal < 0.16
    assert {c.region for c in cases} == {"head", "chest", "abdomen"}
    assert {c.plane for c in cases} == set(PLANES) and {c.phase for c in cases} == set(PHASES)
    sizes = [f.size_cm for c in cases for f in c.findings if f.kind in ("cyst", "mass", "haemorrhage", "calcification")]
    assert min(sizes) >= 2.0


@pytest.mark.parametrize(
    "finding",
    [
        Finding("cyst", "liver", "liver right lobe", size_cm=4.0, count=3),
        Finding("mass", "spleen", "spleen", size_cm=3.5, count=2),
        Finding("calcification", "kidney", "left kidney", side="left", size_cm=2.0, count=2),
    ],
)
def test_reported_count_is_the_number_of_separate_lesions(finding):
    from scipy import ndimage

    image = render_case(_case(findings=[finding], seed=8))
    labels, n = ndimage.label(image.finding_labels == 1)
    sizes = ndimage.sum(labels > 0, labels, range(1, n + 1))
    assert sum(size >= 8 for size in sizes) == finding.count
