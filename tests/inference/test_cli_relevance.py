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
