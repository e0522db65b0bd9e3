"""Display windows: presets, file tags, percentiles; data is never changed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_med3dvlm.io import WINDOW_PRESETS, Volume, contrast_limits


def _ct(window=None):
    data = np.linspace(-1024, 3000, 10 * 12 * 14).reshape(10, 12, 14).astype(np.int16)
    return Volume(data=data, modality="CT", window=window)


@pytest.mark.parametrize(
    ("preset", "limits"),
    [("soft tissue", (-160, 240)), ("lung", (-1350, 150)), ("bone", (-500, 1300)), ("brain", (0, 80))],
)
def test_ct_presets(preset, limits):
    volume = _ct()
    before = volume.data.copy()
    assert contrast_limits(volume, preset) == limits
    np.testing.assert_array_equal(volume.data, before)  # HU stay HU
    assert preset in WINDOW_PRESETS


def test_file_window_wins_in_auto_and_is_available_by_name():
    volume = _ct(window=(40.0, 80.0))
    assert contrast_limits(volume) == (0.0, 80.0)
    assert contrast_limits(volume, "dicom") == (0.0, 80.0)
    assert contrast_limits(_ct(), "auto") == (-160.0, 240.0)  # CT without tags: soft tissue
    with pytest.raises(ValueError, match="no window tags"):
        contrast_limits(_ct(), "dicom")


def test_mr_uses_percentiles_of_the_foreground():
    rng = np.random.default_rng(0)
    data = np.zeros((20, 32, 32), np.float32)
    data[5:15, 8:24, 8:24] = rng.uniform(100, 200, (10, 16, 16))
    data[10, 16, 16] = 1e6  # one hot voxel must not set the top of the window
    low, high = contrast_limits(Volume(data=data, modality="MR"))
    assert 100 <= low < 110 and 190 < high <= 200


def test_explicit_center_width_and_unknown_names():
    assert contrast_limits(_ct(), (50, 350)) == (-125.0, 225.0)
    with pytest.raises(ValueError, match="unknown window preset"):
        contrast_limits(_ct(), "liver-ish")

