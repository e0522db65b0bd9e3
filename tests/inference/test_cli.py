import json

import nibabel as nib
import numpy as np
import pytest

from napari_med3dvlm.cli import main


@pytest.fixture
def nifti_path(tmp_path, ct_volume):
    """A CT saved under a file name that identifies a (fictional) patient."""
    path = tmp_path / "inputs" / "DOE_JOHN_19610203.nii.gz"
    path.parent.mkdir()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct_volume.transpose(2, 1, 0)), affine), str(path))
    return path


def test_report_writes_markdown_and_json_per_volume(engine, tiny_model_dir, nifti_path, tmp_path, capsys):
    out = tmp_path / "reports"
    code = main(["report", str(nifti_path), str(nifti_path), "--out", str(out), "--model", str(tiny_model_dir)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report-01.json", "report-01.md", "report-02.json", "report-02.md"]
    first = json.loads((out / "report-01.json").read_text())
    second = json.loads((out / "report-02.json").read_text())
    assert first["report"] and first["report"] == second["report"]  # greedy and cached: identical
    assert first["volume"]["shape"] == [24, 48, 48] and first["volume"]["spacing"] == pytest.approx([2.5, 0.8, 0.8])
    assert first["model_id"] == "local:" + tiny_model_dir.name
    everything = capsys.readouterr().out + "".join(p.read_text() for p in out.iterdir())
    assert "DOE" not in everything and "19610203" not in everything


def test_ask_streams_the_answer_to_stdout(engine, nifti_path, capsys):
    assert main(["ask", str(nifti_path), "Which organ is abnormal?", "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed
    from napari_med3dvlm.inference import Conversation
    from napari_med3dvlm.io import Volume, read_volume

    volume = read_volume(nifti_path)
    engine_answer = "".join(Conversation().stream_answer(engine, Volume(volume.data), "Which organ is abnormal?"))
    assert printed == engine_answer.strip()


def test_closed_question_and_unavailable_model(engine, nifti_path, capsys, monkeypatch):
    choices = ["liver", "spleen", "kidney", "none"]
    assert main(["ask", str(nifti_path), "Which organ?", "--choices", *choices]) == 0
    ranked = capsys.readouterr().out.strip()
    assert ranked in {f"{letter}. {choice}" for letter, choice in zip("ABCD", choices)}
    assert main(["ask", str(nifti_path), "Which organ?", "--choices", *choices, "--closed-answer", "generate",
                 "--max-new-tokens", "4"]) == 0
    assert engine.settings.closed_answer == "generate"
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["ask", str(nifti_path), "Which organ?", "--model", "nobody/no-model"]) == 1
    assert "Settings" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_line_process_exits_with_every_output_written(tiny_model_dir, nifti_path, tmp_path, config_dir):
    """`python -m napari_med3dvlm report` (the console script's path) leaves without the interpreter's
    teardown: the files, the piped standard output and the exit code must all still be there; and
    an error in a command that leaves that way keeps its code 2 and its one line."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NAPARI_MED3DVLM_MERGED_CACHE": "0"}
    out = tmp_path / "reports"
    result = subprocess.run(
        [sys.executable, "-m", "napari_med3dvlm", "report", str(nifti_path), "--out", str(out), "--model", str(tiny_model_dir),
         "--device", "cpu", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(f"1 report(s) written to {out}")  # buffered pipe, flushed
    record = json.loads((out / "report-01.json").read_text())
    assert record["report"] and record["report"] in (out / "report-01.md").read_text()
    missing = subprocess.run(
        [sys.executable, "-m", "napari_med3dvlm", "search", "anything", "--db", str(tmp_path / "no-index")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "no index at" in missing.stderr
