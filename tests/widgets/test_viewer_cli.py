import json

from napari_med3dvlm.cli import main


def test_headless_demo_writes_a_report_and_a_screenshot(engine, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--headless", "--out", str(out), "--model", str(tiny_model_dir), "--max-new-tokens", "16"])
    assert code == 0, capsys.readouterr().err
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


def test_view_opens_the_sample_with_every_dock(engine):
    from napari_med3dvlm.viewer_cli import open_viewer

    viewer, docks = open_viewer(show=False)
    try:
        assert {"Volume", "Report", "Chat", "Settings"} <= set(docks)
        assert docks["Report"].layer_picker.layer() is viewer.layers[0]
        assert viewer.layers[0].metadata["modality"] == "CT"
    finally:
        viewer.close()
