"""The hand-made M3D fixture goes through the same loaders as phantom splits."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import CaptionDataset, VQADataset, load_image

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "m3d_mini"


def test_caption_dataset_reads_npy_and_nifti_entries():
    train = CaptionDataset(FIXTURE, "M3D_Cap.json", "train")
    assert len(train) == 2
    first = train[0]
    assert first["image"].shape == (1, 4, 6, 8) and first["image"].dtype == torch.float32
    assert float(first["image"][0, 0, 0, 0]) == 1.0 and float(first["image"][0, -1, -1, -1]) == 0.0
    assert first["text"] == ("Large hypodense lesion in the right lobe of the liver, "
                             "with peripheral nodular enhancement.")
    assert train[1]["image"].shape == (1, 4, 6, 8)  # (D, H, W) .npy gains its channel axis

    test = CaptionDataset(FIXTURE, FIXTURE / "M3D_Cap.json", "test")
    image = test[0]["image"]
    # SimpleITK order (D, H, W), as the reference reads its prepared .nii.gz: the cube is at the origin
    assert image.shape == (1, 4, 6, 8)
    assert float(image[0, :2, :2, :2].min()) == 1.0 and float(image.sum()) == 8.0
    assert len(CaptionDataset(FIXTURE, "M3D_Cap.json", "validation")) == 0


def test_vqa_dataset_closed_open_and_yes_no():
    closed = VQADataset(FIXTURE, "M3D_VQA_test.csv", mode="closed")
    assert len(closed) == 4
    row = closed[1]
    assert row["question_type"] == 3 and row["choices"] == ["Spleen", "Kidney", "Pancreas", "Liver"]
    assert row["answer"] == "Liver" and row["answer_choice"] == "D" and row["mode"] == "closed"
    assert row["image"].shape == (1, 4, 6, 8)
    assert closed[2]["image"].shape == (1, 4, 6, 8)  # a .nii.gz row
    open_ = VQADataset(FIXTURE, "M3D_VQA_test.csv", mode="open")
    assert open_.record(3)["answer"] == "Right pleural space"
    yn = VQADataset(FIXTURE, "M3D_VQA_yn_test.csv", mode="yn")
    assert [yn.record(i)["answer"] for i in range(2)] == ["Yes", "No"]
    assert yn.record(0)["choices"] == ["Yes", "No"]


def test_augmentation_hook_receives_image_and_index():
    seen = []

    def hook(image, index):
        seen.append(index)
        return image * 0.5

    data = CaptionDataset(FIXTURE, "M3D_Cap.json", "train", transform=hook)
    assert float(data[0]["image"].max()) == 0.5 and seen == [0]


def test_refuses_pickled_npy(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_image(path)


def test_rejects_unknown_mode_and_files(tmp_path):
    with pytest.raises(ValueError):
        VQADataset(FIXTURE, "M3D_VQA_test.csv", mode="multiple")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError):
        load_image(tmp_path / "x.png")
