"""A representative part of the hostile corpus opened through the Volume dock, one after another in
one viewer: a refused file is a napari notification naming it, a loadable one a layer, and the viewer
keeps working throughout."""

from __future__ import annotations

import numpy as np
import pytest
from corpus import CASES, PATIENT_TAGS

# slow: the whole corpus through the Volume dock
pytestmark = pytest.mark.slow

BY_ID = {c.id: c for c in CASES}
SUBSET = [
    "gzip-crc", "nifti-complex-nii", "nifti-dim-huge-gz", "nifti-fifo", "dicom-file-frames-2g",
    "dicom-file-slope-text", "folder-only-fifo", "zip-encrypted", "zip-bomb-128m",
    "nifti-nan-sform-gz", "dicom-slope-text-one", "folder-fifo-dcm", "zip-corrupt-member",
]


@pytest.mark.timeout(600, func_only=True)
def test_the_volume_dock_survives_the_corpus(make_napari_viewer, engine, corpus, qtbot):
    from napari.utils.notifications import notification_manager

    from napari_med3dvlm.widgets import VolumeWidget

    viewer = make_napari_viewer()
    dock = VolumeWidget(viewer)
    shown = []
    notification_manager.notification_ready.connect(shown.append)
    try:
        for case_id in SUBSET:
            case, path = BY_ID[case_id], corpus[case_id]
            before, layers_before = len(shown), len(viewer.layers)
            dock.open_path(path)
            qtbot.waitUntil(lambda: not dock.reading, timeout=60_000)
            qtbot.wait(50)  # let the notification reach the manager
            texts = [str(n.message) for n in shown[before:]]
            if case.expect == "refuse":
                assert len(viewer.layers) == layers_before, case_id
                assert any("Could not open" in t and path.name in t for t in texts), (case_id, texts)
                assert "Could not open" in dock.status.text()
            else:
                assert len(viewer.layers) == layers_before + 1, (case_id, texts, dock.status.text())
                assert viewer.layers[-1].data.shape == case.shape
            for value in PATIENT_TAGS.values():
                assert not any(value in t for t in texts)
        # still alive: a layer can be added and the dock follows it
        layer = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="after the corpus")
        dock.layer_picker.set_layer(layer)
        assert "4 x 8 x 8" in dock.info.text()
    finally:
        notification_manager.notification_ready.disconnect(shown.append)
