"""Each phantom case's lesion label map: written beside the volume on its grid, and opened with the
sample as a Labels layer that lies exactly over the image."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_med3dvlm.phantoms.case import Finding, PhantomCase
from napari_med3dvlm.phantoms.writers import LESIONS_SUFFIX, SUBDIR, WriteOptions, series_name, write_case


def test_split_writes_a_lesion_label_map_on_the_volume_grid(tmp_path):
    case = PhantomCase("c0", 11, "abdomen", "arterial", "coronal", findings=[
        Finding("cyst", "kidney", "left kidney", side="left", size_cm=3.0),
        Finding("mass", "liver", "liver right lobe", size_cm=4.0),
    ])
    write_case(tmp_path, case, WriteOptions(size=(16, 32, 32), slices=24, pixels=64))
    folder = tmp_path / SUBDIR / "c0"
    volume = nib.load(folder / f"{series_name(case)}.nii.gz")
    labels = nib.load(folder / f"{series_name(case)}{LESIONS_SUFFIX}.nii.gz")
    assert labels.shape == volume.shape
    np.testing.assert_allclose(labels.affine, volume.affine)
    data = np.asarray(labels.dataobj)
    assert data.dtype == np.uint8
    findings = json.loads((folder / "case.json").read_text())["findings"]
    assert sorted(np.unique(data)) == list(range(len(findings) + 1))  # one label per finding, 0 elsewhere
    # a cyst is fluid (~0-20 HU) in a kidney: its voxels are darker than the enhancing mass
    hu = np.asarray(volume.dataobj)
    assert np.median(hu[data == 1]) < np.median(hu[data == 2])


@pytest.mark.slow
def test_sample_opens_with_its_lesions_as_an_aligned_labels_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = viewer.open_sample("napari-med3dvlm", "phantom_ct_lesions")
    assert image.__class__.__name__ == "Image" and labels.__class__.__name__ == "Labels"
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert "ground truth" in labels.name
    # the sample has three findings (cyst, mass, effusion): labels 1..3, named in the features
    assert sorted(np.unique(labels.data)) == [0, 1, 2, 3]
    assert "cyst" in labels.features["finding"][1]
    # the liver mass (label 2) is brighter than the kidney cyst (label 1) in HU
    assert np.median(image.data[labels.data == 2]) > np.median(image.data[labels.data == 1])
