"""Screenshots of the scope warning: a real head CT in the Report and Chat docks with the demo model.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/scope_screenshot.py --out docs/images

Needs the Debian package invesalius-examples (its example head CT; pass another with --inv3).
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


def cranium_nifti(inv3: Path, folder: Path) -> Path:
    """The InVesalius example (int16 HU, 108 x 256 x 256, 1.5 x 0.957 x 0.957 mm) as a NIfTI."""
    with tarfile.open(inv3, "r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("matrix.dat"))
        hu = np.frombuffer(archive.extractfile(member).read(), dtype="<i2").reshape(108, 256, 256)
    image = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), np.diag([-0.957, -0.957, 1.5, 1.0]))
    image.header["descrip"] = b"head CT"
    path = folder / "head_ct.nii.gz"
    nib.save(image, str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inv3", type=Path, default=CRANIUM)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_med3dvlm.inference import InferenceEngine, InferenceSettings, set_engine
    from napari_med3dvlm.widgets import ChatWidget, ReportWidget

    set_engine(InferenceEngine(InferenceSettings(model_source="embedded", device="cpu",
                                                 max_new_tokens=args.max_new_tokens)))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 950)
        viewer.open(str(cranium_nifti(args.inv3, Path(tmp))), plugin="napari-med3dvlm")
        report = ReportWidget(viewer)
        chat = ChatWidget(viewer)
        viewer.window.add_dock_widget(report, name="Report", area="right")
        viewer.window.add_dock_widget(chat, name="Chat", area="left")
        report.generate()
        report.runner.wait(timeout_ms=600_000)
        chat.send("Which organ is abnormal?")
        chat.runner.wait(timeout_ms=600_000)
        for _ in range(20):
            QApplication.processEvents()
        print("report warning:", report.scope_banner.text())
        print("chat warning:", chat.scope_banner.text())
        report.grab().save(str(args.out / "scope_warning_report.png"))
        chat.grab().save(str(args.out / "scope_warning_chat.png"))
        viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
