"""`python -m napari_med3dvlm.phantoms split` writes an M3D-layout split the loaders read."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import CaptionDataset, VQADataset

# slow: writes a whole M3D split
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_split_cli_writes_m3d_layout_readable_by_the_loaders(tmp_path):
    out = tmp_path / "phantoms"
    cmd = [sys.executable, "-m", "napari_med3dvlm.phantoms", "split", "--out", str(out), "--train", "8",
           "--validation", "2", "--test", "4", "--size", "16", "32", "32", "--seed", "5", "--workers", "2",
           "--native", "24", "64"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["cases"] == 14

    cap = json.loads((out / "M3D_Cap.json").read_text())
    assert [len(cap[s]) for s in ("train", "validation", "test")] == [8, 2, 4]
    train = CaptionDataset(out, "M3D_Cap.json", "train")
    item = train[0]
    assert item["image"].shape == (1, 16, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["text"] and "\n" not in item["text"]

    vqa = VQADataset(out, "M3D_VQA_test.csv", mode="closed")
    row = vqa[0]
    assert row["image"].shape == (1, 16, 32, 32)
    assert len(row["choices"]) == 4 and row["choices"]["ABCD".index(row["answer_choice"])] == row["answer"]
    yn = VQADataset(out, "M3D_VQA_yn_train.csv", mode="yn")
    assert {yn.record(i)["answer"] for i in range(len(yn))} <= {"Yes", "No"}
    assert (out / "M3D_VQA_val.csv").exists() and (out / "M3D_VQA_yn_val.csv").exists()

    # raw HU NIfTI beside the model input, with its spacing in the affine
    import nibabel as nib

    niftis = sorted(p for p in out.glob("M3D_Cap_npy/phantom/train_00000/*.nii.gz") if "_lesions" not in p.name)
    assert len(niftis) == 1
    assert niftis[0].with_name(niftis[0].name.replace(".nii.gz", "_lesions.nii.gz")).is_file()  # its label map
    nii = nib.load(niftis[0])
    assert nii.get_data_dtype() == np.int16
    assert np.asarray(nii.dataobj).min() < -900
    assert all(z > 1.0 for z in nii.header.get_zooms())

    # same seed -> same files
    again = tmp_path / "again"
    cmd[cmd.index(str(out))] = str(again)
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=240).returncode == 0
    for name in ("M3D_Cap.json", "M3D_VQA_train.csv", "M3D_VQA_yn_test.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    first = out / cap["train"][3]["image"]
    np.testing.assert_array_equal(np.load(first), np.load(again / cap["train"][3]["image"]))
