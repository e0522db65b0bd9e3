import json
import os
import subprocess
import sys

import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.settings import CONFIG_DIR_ENV


@pytest.mark.slow
def test_headless_demo_writes_a_report_and_a_screenshot(tiny_model_dir, tmp_path):
    """As a user runs it: its own process (a fresh napari), on the X server pytest-xvfb started."""
    out = tmp_path / "demo"
    env = dict(os.environ, **{CONFIG_DIR_ENV: str(tmp_path / "config")})
    command = [sys.executable, "-m", "napari_med3dvlm", "demo", "--headless", "--out", str(out)]
    command += ["--model", str(tiny_model_dir), "--max-new-tokens", "16"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "screenshot.png"}
    assert json.loads((out / "report.json").read_text())["report"]
    from PIL import Image

    with Image.open(out / "screenshot.png") as shot:
        assert shot.width > 400 and shot.height > 300
        assert len(set(shot.convert("L").getdata())) > 20  # not a blank window


def test_view_and_demo_are_registered(capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "--headless" in capsys.readouterr().out


@pytest.mark.slow
def test_view_opens_the_sample_with_every_dock(engine, make_napari_viewer):
    # make_napari_viewer is requested for its fresh napari app state, which open_viewer's Viewer uses.
    from napari_med3dvlm.viewer_cli import open_viewer

    viewer, docks = open_viewer(show=False)
    try:
        assert {"Volume", "Report", "Chat", "Settings"} <= set(docks)
        assert docks["Report"].layer_picker.layer() is viewer.layers[0]
        assert viewer.layers[0].metadata["modality"] == "CT"
    finally:
        viewer.close()
