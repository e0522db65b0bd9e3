"""Views between display order (z, y, x as LPS) and acquisition-plane stacks."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_plane_view_round_trips(plane):
    from napari_med3dvlm.io import display_from_plane, plane_view

    data = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    view = plane_view(data, plane)
    assert np.shares_memory(view, data)
    np.testing.assert_array_equal(display_from_plane(view, plane), data)
