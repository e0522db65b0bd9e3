"""The hostile corpus through the command line: bad input is one line on stderr and exit code 2, never a
traceback; good input still gets its report. Most runs call ``main()`` in this process (a tiny model
stands in for the real one); a few run the installed command as a real process."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import CASES, PATIENT_TAGS

from napari_med3dvlm import cli

# slow: the installed command in a subprocess for every refusing case (minutes)
pytestmark = pytest.mark.slow

BY_ID = {c.id: c for c in CASES}
#: Cases the model commands must refuse: the reader refuses them, or they load with a single slice.
REFUSED = [c for c in CASES if c.expect == "refuse" or not c.model]
#: Loadable cases that get a whole report (one per kind of damage; the reader test covers the rest).
REPORTED = [
    "nifti-valid-gz", "nifti-nan-sform-nii", "nifti-zero-pixdim-gz", "nifti-float-nan-nii", "gzip-two-members",
    "dicom-valid", "dicom-slope-text-one", "dicom-pixels-cut-one", "dicom-orientation-zero-one", "dicom-multiframe",
    "folder-fifo-dcm", "folder-nifti-and-bad-dicom", "zip-corrupt-member", "zip-encrypted-one",
]


def _param(case):
    return pytest.param(case, marks=pytest.mark.timeout(case.timeout + 20, func_only=True), id=case.id)


def check_refusal(code: int, err: str, case) -> None:
    """Exit code 2, no traceback, exactly one error line (the last), only warnings before it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert all(line.startswith(("error:", "warning:")) for line in lines), err
    if case.expect == "refuse":
        assert re.search(case.message, lines[-1]), lines[-1]
    else:
        assert "the model needs a 3-D volume" in lines[-1], lines[-1]
    for value in PATIENT_TAGS.values():
        assert value not in err


@pytest.mark.parametrize("case", [_param(c) for c in REFUSED])
def test_report_refuses_in_one_line(case, corpus, tmp_path, engine, capsys):
    code = cli.main(["report", str(corpus[case.id]), "--out", str(tmp_path / "reports")])
    check_refusal(code, capsys.readouterr().err, case)
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


@pytest.mark.parametrize("case", [_param(BY_ID[i]) for i in REPORTED])
def test_report_of_a_loadable_case(case, corpus, tmp_path, engine, capsys):
    out = tmp_path / "reports"
    code = cli.main(["report", str(corpus[case.id]), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md"]
    assert all(line.startswith("warning:") for line in captured.err.splitlines() if line.strip())
    for value in PATIENT_TAGS.values():
        assert value not in captured.err + captured.out


@pytest.mark.parametrize(
    "case_id", ["nifti-complex-gz", "nifti-fifo", "dicom-file-frames-2g", "zip-encrypted", "nifti-one-slice-nii"]
)
def test_ask_and_search_refuse_in_one_line(case_id, corpus, tmp_path, engine, capsys):
    case = BY_ID[case_id]
    path = str(corpus[case_id])
    check_refusal(cli.main(["ask", path, "Is there a lesion?"]), capsys.readouterr().err, case)
    db = tmp_path / "db"
    db.mkdir()
    check_refusal(cli.main(["search", "--volume", path, "--db", str(db)]), capsys.readouterr().err, case)


def _toys():
    name = "med3dvlm_tests_retrieval_toys"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "retrieval" / "retrieval_toys.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.mark.timeout(600, func_only=True)
def test_index_keeps_the_good_volumes_and_skips_the_bad(corpus, tmp_path, monkeypatch, capsys):
    """The whole corpus as one collection: pipes and devices are passed over without being opened,
    every bad volume is reported on one line, every good one is embedded."""
    from napari_med3dvlm.retrieval import embedder as embedder_module

    toy = _toys().CountingEmbedder()
    monkeypatch.setattr(embedder_module, "get_embedder", lambda source=None, device=None, dtype=None: toy)
    root = next(iter(corpus.values())).parents[1]
    code = cli.main(["index", str(root), "--db", str(tmp_path / "db"), "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    embedded = int(re.search(r"(\d+) embedded", captured.out).group(1))
    good_nifti = [c for c in CASES if c.kind == "nifti" and c.expect == "load" and c.model]
    bad_nifti = [c for c in CASES if c.kind == "nifti" and c.expect == "refuse" and "fifo" not in c.id]
    assert embedded >= len(good_nifti)
    for case in bad_nifti:
        assert any(corpus[case.id].name in line for line in failed), case.id
    for case in good_nifti:
        assert not any(f"/{case.id}/" in line for line in failed), case.id
    assert not any("pipe" in line for line in failed)  # never opened, so never failed
    for value in PATIENT_TAGS.values():
        assert value not in captured.err + captured.out


@pytest.mark.timeout(900, func_only=True)
@pytest.mark.parametrize("case_id", ["gzip-crc", "nifti-fifo", "zip-bomb-128m"])
def test_the_installed_command_refuses_in_one_line(case_id, corpus, tmp_path, config_dir):
    """A real process, as a user runs it: nothing but one error line on stderr, exit code 2."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # with the test's config folder
    result = subprocess.run(
        [sys.executable, "-m", "napari_med3dvlm", "report", str(corpus[case_id]), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    check_refusal(result.returncode, result.stderr, BY_ID[case_id])
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
