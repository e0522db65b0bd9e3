"""Every case of the hostile corpus through the npe2 reader the plugin registers: each loads with the
right voxels, spacing and warning, or is refused with our error naming the file; none hangs (a per-case
timeout), and none allocates more than a bounded amount of memory, whatever its header claims."""

from __future__ import annotations

import gc
import re
import tracemalloc
import warnings

import numpy as np
import pytest
from corpus import CASES, PATIENT_TAGS, counts, expected_values

import npe2
from napari_med3dvlm.io import VolumeReadError, read_volume
from napari_med3dvlm.io._napari import get_reader

# slow: ~280 cases, each read under tracemalloc after a full gc (minutes on 2 cores)
pytestmark = pytest.mark.slow

#: Peak memory any one case may take while being read (the corpus volumes are a few kB; the bombs
#: and headers claiming terabytes must be refused before allocating).
PEAK_LIMIT = 32 << 20


def _named(case, path, message: str) -> bool:
    """Refusals name the file, or (folders and zips, whose names may name the patient) what it is."""
    return path.name in message or any(word in message for word in ("the folder", "the zip archive", "IM0"))


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """The plugins installed in this environment, ours among them, as napari finds them."""
    npe2.PluginManager.instance().discover()


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.timeout(c.timeout, func_only=True), id=c.id) for c in CASES])
def test_reader(case, corpus):
    path = corpus[case.id]
    declined = get_reader(str(path)) is None
    gc.collect()
    tracemalloc.start()
    layers, error = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if declined:  # napari would not offer our reader; opening it through the dock still explains why
                read_volume(path)
            else:
                layers = npe2.read([str(path)], stack=False, plugin_name="napari-med3dvlm")
        except VolumeReadError as err:
            error = err
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    messages = [str(w.message) for w in caught] + ([str(error)] if error else [])
    assert peak < PEAK_LIMIT, f"peak memory {peak / 2**20:.1f} MiB"
    for value in PATIENT_TAGS.values():
        assert not any(value in m for m in messages), f"identifier {value!r} in {messages}"

    if case.expect == "refuse":
        assert error is not None, f"loaded: {layers and layers[0][0].shape}"
        assert re.search(case.message, str(error)), str(error)
        assert _named(case, path, str(error)), str(error)
        assert "\n" not in str(error).strip()
        return
    assert error is None, str(error)
    assert not declined, "the reader hook does not claim a file it reads"
    assert len(layers) == 1
    data, kwargs, _ = layers[0]
    assert data.shape == case.shape
    if case.spacing is not None:
        assert tuple(kwargs["scale"]) == pytest.approx(case.spacing, rel=1e-4)
    expected = expected_values(case)
    if case.values == "same":
        np.testing.assert_array_equal(np.sort(np.asarray(data), axis=None), np.sort(expected, axis=None))
    elif expected is not None:
        np.testing.assert_allclose(np.asarray(data, dtype=np.float64), expected, equal_nan=True)
    if case.warns:
        assert any(re.search(case.warns, m) for m in messages), messages


def test_the_corpus_is_large_enough():
    table = counts()
    assert sum(sum(kinds.values()) for kinds in table.values()) >= 90, table
    for kind in ("nifti", "dicom", "folder", "zip"):
        assert table[kind]["refuse"] and table[kind]["load"], table
