"""`napari-med3dvlm report ... --relevance`: one NIfTI map per report sentence, beside the report,
on the source's grid and with its affine."""

import json

import nibabel as nib
import numpy as np

from napari_med3dvlm.cli import main
from napari_med3dvlm.inference.relevance import sentence_spans
from napari_med3dvlm.io import read_volume


def _voxel_centres(image) -> set:
    """World (RAS mm) coordinates of every voxel centre, rounded."""
    index = np.indices(image.shape[:3]).reshape(3, -1)
    world = image.affine[:3, :3] @ index + image.affine[:3, 3:]
    return set(map(tuple, np.round(world.T, 3)))


def test_report_relevance_writes_one_map_per_sentence_with_the_source_affine(engine, tiny_model_dir, tmp_path,
                                                                              ct_volume):
    source = tmp_path / "scan.nii.gz"
    affine = np.array([[-0.8, 0, 0, 100.0], [0, 0.8, 0, -50.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct_volume.transpose(2, 1, 0)), affine), str(source))
    out = tmp_path / "reports"
    assert main(["report", str(source), "--out", str(out), "--model", str(tiny_model_dir), "--relevance"]) == 0
    text = json.loads((out / "report-01.json").read_text())["report"]
    index = json.loads((out / "report-01-where.json").read_text())
    spans = sentence_spans(text)
    assert len(index["maps"]) == len(spans) >= 1
    for entry, (start, end) in zip(index["maps"], spans):
        assert entry["span"] == text[start:end]
        image = nib.load(out / entry["file"])
        # the same voxel grid in physical space (written in display orientation, as the reader
        # returns volumes): the same voxel centres, and the same affine once read back
        assert _voxel_centres(image) == _voxel_centres(nib.load(source))
        np.testing.assert_allclose(read_volume(out / entry["file"]).affine, read_volume(source).affine, atol=1e-5)
        data = np.asarray(image.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and np.isclose(data.max(), 1.0)


def test_report_relevance_maps_have_the_input_files_shape_affine_and_voxel_order(engine, tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    """A map over a file stored with swapped, flipped axes (i to Posterior, j to the patient's Left:
    negative x spacing, k to Superior) is written in that file's own voxel order: the same shape and
    affine, and its peak on the voxels of the structure it points at, so numpy users can overlay
    the two arrays directly."""
    from napari_med3dvlm.inference import relevance

    stored = np.full((40, 36, 20), -1000, dtype=np.int16)  # (i, j, k) as on disk
    i, j, k = np.mgrid[:40, :36, :20]
    stored[((i - 20) / 17) ** 2 + ((j - 18) / 15) ** 2 < 1] = 40  # a soft-tissue body
    blob = (slice(26, 32), slice(6, 12), slice(12, 16))  # off centre on every axis
    stored[blob] = 700
    affine = np.array([[0, -0.9, 0, 20.0], [-0.8, 0, 0, 30.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    assert "".join(nib.aff2axcodes(affine)) == "PLS"
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), str(source))

    def input_as_map(score_fn, image, method="combined", cancel_event=None):
        """The relevance of each voxel is its model-input intensity: the map peaks on the bright blob."""
        x = image[0, 0].detach().float()
        return x / x.max(), 0.0

    monkeypatch.setattr(relevance, "attribute", input_as_map)
    out = tmp_path / "reports"
    assert main(["report", str(source), "--out", str(out), "--model", str(tiny_model_dir), "--relevance"]) == 0
    maps = sorted(out.glob("report-01-where-*.nii.gz"))
    assert maps
    for path in maps:
        image = nib.load(path)
        assert image.shape == stored.shape
        np.testing.assert_allclose(image.affine, affine, atol=1e-5)
        data = np.asarray(image.dataobj)
        peak = np.unravel_index(np.argmax(data), data.shape)
        # within the blob (one voxel of interpolation slack); a flip of any axis would move it away
        assert all(s.start - 1 <= p < s.stop + 1 for p, s in zip(peak, blob)), peak
        assert data[blob].mean() > 1.5 * data[stored == 40].mean()  # bone-bright blob over soft tissue
