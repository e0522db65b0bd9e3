"""The documentation gallery: a few phantom cases shown in napari with a window preset, saved as
PNG screenshots next to their reports (`python -m napari_med3dvlm.phantoms gallery --out DIR`).

Needs a display; under a headless session run it with ``xvfb-run -a``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .case import Finding, PhantomCase
from .generator import render_case
from .report import write_report

#: name -> (case, window preset)
GALLERY: dict[str, tuple[PhantomCase, str]] = {
    "abdomen_axial": (PhantomCase("g1", 101, "abdomen", "portal venous", "axial", [
        Finding("mass", "liver", "liver right lobe", size_cm=5.0),
        Finding("cyst", "kidney", "left kidney", side="left", size_cm=3.5)]), "soft tissue"),
    "abdomen_coronal": (PhantomCase("g2", 104, "abdomen", "delayed", "coronal", [
        Finding("enlargement", "spleen", "spleen", size_cm=18.0),
        Finding("calcification", "kidney", "right kidney", side="right", size_cm=2.0)]), "soft tissue"),
    "chest_axial": (PhantomCase("g3", 106, "chest", "portal venous", "axial", [
        Finding("effusion", "pericardium", "pericardium", severity="moderate"),
        Finding("calcification", "lung", "left lower lobe", side="left", size_cm=2.5)]), "soft tissue"),
    "chest_coronal": (PhantomCase("g4", 102, "chest", "arterial", "coronal", [
        Finding("mass", "lung", "right upper lobe", side="right", size_cm=4.5),
        Finding("effusion", "pleural space", "left pleura", side="left", severity="moderate")]), "lung"),
    "head_axial": (PhantomCase("g5", 103, "head", "non-contrast", "axial", [
        Finding("haemorrhage", "brain", "left frontal", side="left", size_cm=4.0)]), "brain"),
    "head_sagittal": (PhantomCase("g6", 105, "head", "arterial", "sagittal", [
        Finding("mass", "brain", "right parietal", side="right", size_cm=3.5)]), "brain"),
}


def best_slice(finding_labels: np.ndarray, label: int | None = None) -> int:
    """The stack slice showing most of a finding (the middle slice for normal cases)."""
    mask = finding_labels > 0 if label is None else finding_labels == label
    if not mask.any():
        return finding_labels.shape[0] // 2
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def save_gallery(out_dir, names=None, size=(760, 720)) -> dict[str, dict]:
    """Screenshot each gallery case (training grid, acquisition stack as stored) in napari."""
    import napari
    from PIL import Image
    from qtpy.QtCore import QCoreApplication

    from ..io import WINDOW_PRESETS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    for dock in (viewer.window._qt_viewer.dockLayerList, viewer.window._qt_viewer.dockLayerControls):
        dock.setVisible(False)
    viewer.window._qt_window.resize(*size)
    results = {}
    try:
        for name in names or list(GALLERY):
            case, window = GALLERY[name]
            image = render_case(case)
            center, width = WINDOW_PRESETS[window]
            viewer.layers.clear()
            viewer.add_image(image.stack, scale=image.stack_spacing, colormap="gray", name=f"{case.region} {case.plane}",
                             contrast_limits=(center - width / 2, center + width / 2))
            index = best_slice(image.finding_labels, 1 if case.findings else None)
            viewer.dims.set_point(0, index * image.stack_spacing[0])
            viewer.reset_view()
            for _ in range(5):
                QCoreApplication.processEvents()
            path = out_dir / f"phantom_{name}.png"
            Image.fromarray(viewer.screenshot(canvas_only=True)).convert("RGB").save(path)
            results[name] = {"path": str(path), "window": window, "slice": index, "report": write_report(case)}
    finally:
        viewer.close()
    return results
