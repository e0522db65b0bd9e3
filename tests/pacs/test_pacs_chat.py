"""Chat in the SR: ``ask ... --sr --out DIR [--stow]`` writes the question (a closed one with its
choices) and the answer as a DICOM SR in the source's study, against a real Orthanc; and the
``--llm vllm`` batch report takes the DICOMweb study as the sequential run does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.inference.dicom_sr import dicom_text, sr_findings, sr_questions

from io_assets import PATIENT_TAGS

IDENTIFIERS = [v for k, v in PATIENT_TAGS.items() if k != "AccessionNumber"] + ["DOE", "ACC-55102"]
CHOICES = ["Brain", "Liver", "Kidney", "Lung"]


def dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    messages = result.stdout + result.stderr
    assert "Comprehensive3DSR" in messages
    return [line for line in messages.splitlines() if line.startswith("Error")]


def test_ask_from_the_pacs_writes_the_question_and_answer_as_an_sr_in_the_study(
    engine, tiny_model_dir, orthanc, head_study, tmp_path, capsys
):
    out = tmp_path / "chat"
    code = main(["ask", "--dicomweb", orthanc.dicomweb, "--study", head_study.study_uid, "Which organ is shown?",
                 "--choices", *CHOICES, "--sr", "--stow", "--out", str(out), "--model", str(tiny_model_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    answer = captured.out.splitlines()[0].strip()
    assert answer[:2] in ("A.", "B.", "C.", "D.")  # a closed answer: the letter and the choice
    assert sorted(p.name for p in out.iterdir()) == ["chat-01.dcm"]
    assert f"stored on {orthanc.dicomweb}" in captured.out

    sr = pydicom.dcmread(out / "chat-01.dcm")
    assert dciodvfy_errors(out / "chat-01.dcm") == []
    (question, stored_answer), = sr_questions(sr)
    assert question == "Which organ is shown? Choices: A. Brain B. Liver C. Kidney D. Lung"
    assert stored_answer == dicom_text(answer) != ""
    assert sr_findings(sr) == ""  # a chat, not a report
    assert sr.StudyInstanceUID == head_study.study_uid and sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesDescription == "Med3DVLM questions and answers (research use only)"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == head_study.series_uid and len(evidence.ReferencedSOPSequence) == 24

    # Orthanc lists the SR in the source's study.
    listed = orthanc.get(f"/dicom-web/studies/{head_study.study_uid}/series/{sr.SeriesInstanceUID}/instances")
    assert [item["00080018"]["Value"][0] for item in listed] == [sr.SOPInstanceUID]
    assert listed[0]["00080060"]["Value"][0] == "SR"

    shown = captured.out + captured.err
    assert not any(value in shown for value in IDENTIFIERS)


def test_ask_about_dicom_files_appends_chat_srs(engine, tiny_model_dir, head_study, tmp_path, capsys):
    out = tmp_path / "chat"
    answers = []
    for question in ("What is shown?", "Is there a lesion?"):
        assert main(["ask", str(head_study.folder), question, "--sr", "--out", str(out),
                     "--model", str(tiny_model_dir), "--max-new-tokens", "8"]) == 0
        captured = capsys.readouterr()
        answers.append(captured.out.splitlines()[0].strip())
        assert not any(value in captured.out + captured.err for value in IDENTIFIERS)
    assert sorted(p.name for p in out.iterdir()) == ["chat-01.dcm", "chat-02.dcm"]  # the next free number
    for name, question, answer in zip(("chat-01.dcm", "chat-02.dcm"), ("What is shown?", "Is there a lesion?"), answers):
        sr = pydicom.dcmread(out / name)
        # The answer as printed, less the control characters a DICOM text may not hold (the tiny model emits some).
        assert sr_questions(sr) == [(question, dicom_text(answer) or "(no answer)")]
        assert dciodvfy_errors(out / name) == []


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda nifti, folder, out: [str(nifti), "What?", "--sr", "--out", str(out)], "a DICOM SR needs a DICOM source"),
        (lambda nifti, folder, out: [str(folder), "What?", "--sr"], "--sr needs --out DIR"),
        (lambda nifti, folder, out: [str(folder), "What?", "--stow", "--out", str(out)], "--stow stores the SR"),
        (lambda nifti, folder, out: [str(folder), "What?", "--dicomweb", "http://127.0.0.1:9/dicom-web",
                                     "--study", "1.2.3"], "not both"),
        (lambda nifti, folder, out: ["What?", "--sr", "--out", str(out)], "nothing to read"),
    ],
)
def test_ask_sr_faults_are_one_line_before_the_model_runs(tmp_path, capsys, head_study, config_dir, make_args,
                                                           expected):
    import nibabel as nib

    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), str(nifti))
    out = tmp_path / "out"
    # No model is given or installed here: each fault is found before one is needed.
    code = main(["ask", *make_args(nifti, head_study.folder, out), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and expected in errors[0], err
    assert not out.exists()
    assert not any(value in err for value in IDENTIFIERS)


# -- the --llm vllm batch path takes the DICOMweb study -------------------------------------------------


@pytest.fixture
def stand_in_vllm(engine):
    """The stand-in vLLM server of the vLLM client tests (greedy decoding with the tiny model)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
    from test_vllm_client import StandIn

    from napari_med3dvlm.inference import vllm_backend

    model, tokenizer = engine.load()
    server = StandIn(model.language_model, tokenizer.eos_token_id)
    yield server
    server.close()
    vllm_backend.stop_all()


@pytest.mark.slow
def test_batch_report_reads_the_dicomweb_study_and_writes_the_sr(engine, stand_in_vllm, orthanc, head_study, tmp_path,
                                                                capsys):
    common = ["--dicomweb", orthanc.dicomweb, "--study", head_study.study_uid, "--sr",
              "--model", engine.settings.model_source, "--device", "cpu", "--max-new-tokens", "24"]
    assert main(["report", "--out", str(tmp_path / "seq"), *common]) == 0
    assert main(["report", "--out", str(tmp_path / "batch"), *common, "--vllm-url", stand_in_vllm.url]) == 0
    captured = capsys.readouterr()
    assert len(stand_in_vllm.bodies) == 1 and "1 report(s) written" in captured.out
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["report-01.dcm", "report-01.json", "report-01.md"]
    seq = json.loads((tmp_path / "seq" / "report-01.json").read_text())
    batch = json.loads((tmp_path / "batch" / "report-01.json").read_text())
    assert batch["report"] == seq["report"] and batch["report"]
    assert batch["generation"]["llm"] == "vllm" and seq["generation"]["llm"] == "transformers"
    assert sr_findings(pydicom.dcmread(tmp_path / "batch" / "report-01.dcm")) == sr_findings(
        pydicom.dcmread(tmp_path / "seq" / "report-01.dcm"))
    assert not any(value in captured.out + captured.err for value in IDENTIFIERS)
