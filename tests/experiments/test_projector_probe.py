"""The variance share `experiments/projector_probe.py` reports beside its probes: how large a label's
signal is in raw features (docs/training.md quotes it for both encoders)."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "projector_probe.py"


def _probe():
    spec = importlib.util.spec_from_file_location("projector_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variance_share_is_the_part_of_the_variance_between_the_label_classes():
    variance_fraction = _probe().variance_fraction
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 5000)
    noise = rng.normal(size=(10000, 4))
    # a shift of 2 along one of four unit-variance features: between-class variance 1 of a total 5
    shifted = noise + np.outer(labels * 2.0, [1, 0, 0, 0])
    assert abs(variance_fraction(shifted, labels) - 0.2) < 0.01
    assert variance_fraction(noise, labels) < 0.002          # a label the features do not carry
    # the share does not depend on the features' scale, only on how much of the variance the label holds
    assert abs(variance_fraction(shifted * 50.0, labels) - variance_fraction(shifted, labels)) < 1e-9
    assert variance_fraction(np.ones((4, 3)), np.array([0, 1, 0, 1])) == 0.0   # no variance at all
