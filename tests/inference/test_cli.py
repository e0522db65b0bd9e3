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
