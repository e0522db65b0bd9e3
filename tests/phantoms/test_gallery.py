"""The documentation gallery renders phantom slices in napari (under Xvfb in tests)."""

import numpy as np
import pytest
from PIL import Image

from napari_med3dvlm.phantoms.gallery import GALLERY, save_gallery
from napari_med3dvlm.phantoms.report import write_report

# slow: renders the gallery and takes a screenshot
pytestmark = pytest.mark.slow


def test_gallery_screenshot_shows_the_phantom(tmp_path, qapp):
    results = save_gallery(tmp_path, names=["head_axial"])
    info = results["head_axial"]
    pixels = np.asarray(Image.open(info["path"]).convert("L"), dtype=float)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.max() > 200 and (pixels < 20).mean() > 0.2  # bright skull on a black background
    assert info["report"] == write_report(GALLERY["head_axial"][0])
