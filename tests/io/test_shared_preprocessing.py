"""Inference and training feed the model through the same `model_input` (which runs
`preprocess_volume`).

Callers import the function by name, so patching the module attribute would miss them; instead the
test watches the function's own code object run (sys.setprofile) and compares the tensors.
"""

from __future__ import annotations

import json
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_med3dvlm.io import Volume, acquisition_view, read_volume
from napari_med3dvlm.io import preprocess as preprocess_module


@contextmanager
def callers_of(function):
    """Collect the file of every caller of `function` while the block runs."""
    code, callers = function.__code__, []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code is code:
            callers.append(Path(frame.f_back.f_code.co_filename).as_posix())

    from napari_med3dvlm.inference.engine import model_thread

    previous = sys.getprofile()
    sys.setprofile(profiler)
    threading.setprofile(profiler)
    model_thread().call(sys.setprofile, profiler)  # the engine's long-lived thread, started earlier
    try:
        yield callers
    finally:
        sys.setprofile(previous)
        threading.setprofile(None)
        model_thread().call(sys.setprofile, None)


class _RecordingEncoder(torch.nn.Module):
    """Stands in for the VLM: keeps the image tensor it was given."""

    def __init__(self, image_size):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(image_size=image_size, proj_out_num=4)
        self.seen = None

    def encode_images(self, images):
        self.seen = images.detach().clone()
        return images.mean(dim=(2, 3, 4)) + self.bias


def test_inference_encodes_through_model_input():
    from napari_med3dvlm.inference.engine import InferenceEngine
    from napari_med3dvlm.settings import InferenceSettings

    size = (8, 16, 16)
    model = _RecordingEncoder(size)
    engine = InferenceEngine(InferenceSettings(device="cpu", dtype="float32"), loader=lambda *a: (model, None))
    data = np.full((12, 20, 20), -1000, np.int16)
    data[2:10, 4:16, 4:16] = 60
    with callers_of(preprocess_module.model_input) as callers:
        engine.encode(Volume(data, modality="CT"))
    assert any(c.endswith("inference/engine.py") for c in callers), callers
    expected, _ = preprocess_module.preprocess_volume(data, "CT", spatial_size=size)
    torch.testing.assert_close(model.seen, expected)


@pytest.mark.slow
def test_training_images_are_written_by_model_input(tmp_path):
    from training.data.m3d import CaptionDataset

    from napari_med3dvlm.phantoms.generator import render_case
    from napari_med3dvlm.phantoms.sampling import sample_case
    from napari_med3dvlm.phantoms.writers import WriteOptions, case_seed, write_split

    options = WriteOptions(size=(8, 16, 16), slices=24, pixels=64)
    with callers_of(preprocess_module.model_input) as callers:
        write_split(tmp_path, {"train": 2}, seed=5, options=options, workers=1)
    assert any(c.endswith("phantoms/writers.py") for c in callers), callers

    dataset = CaptionDataset(tmp_path, split="train")
    entries = json.loads((tmp_path / "M3D_Cap.json").read_text())["train"]
    for index in range(len(dataset)):
        case = sample_case(case_seed(5, "train", index), case_id=f"train_{index:05d}")
        image = render_case(case, slices=options.slices, pixels=options.pixels)
        expected, _ = preprocess_module.preprocess_volume(
            image.stack, "CT", window=options.window, spatial_size=options.size
        )
        torch.testing.assert_close(dataset[index]["image"], expected[0])

        # A user opening the case's NIfTI gets the training stack back through acquisition_view,
        # and preprocessing that gives exactly the training tensor.
        nifti = tmp_path / entries[index]["image"].replace(".npy", ".nii.gz")
        volume = read_volume(nifti)
        assert volume.plane == case.plane
        view, _ = acquisition_view(volume)
        np.testing.assert_array_equal(view, image.stack)
        again, _ = preprocess_module.preprocess_volume(view, "CT", window=options.window, spatial_size=options.size)
        torch.testing.assert_close(again[0], dataset[index]["image"])
