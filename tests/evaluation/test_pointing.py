"""The pointing game: a map's maximum in the named finding's mask (1-voxel tolerance), energy inside,
and the uniform and centre-prior baselines."""

import numpy as np
import pytest

from napari_med3dvlm.io import preprocess_volume
from napari_med3dvlm.phantoms import render_case
from napari_med3dvlm.phantoms.case import Finding, PhantomCase
from training.evaluation import pointing


def test_point_scores_hit_tolerance_energy_and_baselines():
    mask = np.zeros((8, 16, 16), bool)
    mask[2:4, 2:5, 2:5] = True
    peak_inside = np.zeros(mask.shape)
    peak_inside[3, 3, 3] = 1.0
    assert pointing.point_scores(peak_inside, mask)["hit"] and pointing.point_scores(peak_inside, mask)["energy"] == 1.0
    next_to = np.zeros(mask.shape)
    next_to[3, 3, 5] = 1.0  # one voxel outside: within tolerance
    assert pointing.point_scores(next_to, mask)["hit"] and pointing.point_scores(next_to, mask)["energy"] == 0.0
    far = np.zeros(mask.shape)
    far[7, 15, 15] = 1.0
    scores = pointing.point_scores(far, mask)
    assert not scores["hit"]
    assert scores["uniform_energy"] == pytest.approx(mask.mean())
    assert mask.mean() < scores["uniform_hit"] < 1  # the dilated mask's share
    assert not scores["centre_hit"]  # the centre (4, 8, 8) is outside this mask
    centred = np.zeros(mask.shape, bool)
    centred[3:6, 6:10, 6:10] = True
    assert pointing.point_scores(far, centred)["centre_hit"]
    game = pointing.PointingGame()
    game.add(peak_inside, mask)
    game.add(far, mask)
    summary = game.summary()
    assert summary["n"] == 2 and summary["hit_rate"] == 0.5 and summary["centre_hit_rate"] == 0.0


def test_labels_follow_the_model_input_and_sentences_are_matched_to_findings():
    case = PhantomCase("p", 4, "abdomen", "portal venous", "axial", findings=[
        Finding("cyst", "kidney", "left kidney", side="left", size_cm=4.0),
        Finding("effusion", "peritoneal cavity", "peritoneum", severity="small"),
    ])
    image = render_case(case, slices=24, pixels=64)
    tensor, transform = preprocess_volume(image.stack, "CT", window="soft tissue", spatial_size=(16, 32, 32))
    labels = pointing.labels_to_model(image.finding_labels, transform)
    assert labels.shape == (16, 32, 32) and (labels == 1).any()
    # the lesion lands where the transform says model voxels come from
    centre = transform.to_input_index(np.argwhere(labels == 1).mean(axis=0))
    np.testing.assert_allclose(centre, np.argwhere(image.finding_labels == 1).mean(axis=0), atol=1.0)
    assert pointing.focal_matches("A 4.0 cm simple cyst in the left kidney.", case) == [0]
    assert pointing.focal_matches("A cyst in the right kidney.", case) == []  # wrong site
    assert pointing.focal_matches("Small ascites.", case) == []  # not focal
    assert pointing.focal_matches("No renal mass, cyst or calculus.", case) == []  # denied


def test_report_pointing_and_model_card_table(engine):
    model, tokenizer = engine.load()
    case = PhantomCase("p", 4, "abdomen", "portal venous", "axial", findings=[
        Finding("cyst", "kidney", "left kidney", side="left", size_cm=4.0)]).to_dict()
    report = "CT abdomen, axial images. There is a simple cyst in the left kidney. No ascites."
    result = pointing.report_pointing(model, tokenizer, [report], [(None, case)])
    assert result["n"] == 1 and result["sentences"] == 3 and result["hit_rate"] in (0.0, 1.0)
    assert 0.0 <= result["energy"] <= 1.0 and result["uniform_hit_rate"] > 0
    table = pointing.pointing_table({"pointing": result, "caption": {}})
    assert "pointing hit" in table and "| pointing (combined) | 1 |" in table
    assert pointing.pointing_table({"pointing": None}) == ""
