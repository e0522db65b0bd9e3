"""The command line against a real server: what it writes equals the in-process result (greedy),
the token is needed and never shown, and a dead server is one line and exit code 2."""

import json

import pytest

from napari_med3dvlm import cli
from napari_med3dvlm.inference import set_engine

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_engine(config_dir, monkeypatch):
    """Each command builds the engine its options ask for; the shared one is restored afterwards."""
    monkeypatch.delenv("NAPARI_MED3DVLM_SERVER", raising=False)
    monkeypatch.delenv("NAPARI_MED3DVLM_TOKEN", raising=False)
    previous = set_engine(None)
    yield
    set_engine(previous)


def _report(tmp_path, name, sample, *options):
    out = tmp_path / name
    assert cli.main(["report", str(sample), "--out", str(out), "--max-new-tokens", "48", *options]) == 0
    return json.loads((out / "report-01.json").read_text())


def test_report_through_the_server_equals_the_in_process_report(embedded_server, sample_nifti, tmp_path, capsys):
    url, token, log = embedded_server
    local = _report(tmp_path, "local", sample_nifti, "--model", "embedded", "--device", "cpu")
    remote = _report(tmp_path, "remote", sample_nifti, "--server", url, "--token", token)
    assert remote["report"] and remote["report"] == local["report"]
    assert remote["preprocessing"] == local["preprocessing"]
    assert remote["scope"] == local["scope"]
    assert remote["volume"]["shape"] == local["volume"]["shape"]
    written = capsys.readouterr().out + "".join(p.read_text() for p in (tmp_path / "remote").iterdir())
    assert token not in written and "DOE" not in written and token not in log.read_text()


def test_open_and_closed_answers_through_the_server_equal_in_process(embedded_server, sample_nifti, capsys):
    url, token, _ = embedded_server
    question = "Which contrast phase is this scan?"
    choices = ["non-contrast", "arterial", "portal venous", "delayed"]
    answers = {}
    for where in (["--model", "embedded", "--device", "cpu"], ["--server", url, "--token", token]):
        assert cli.main(["ask", str(sample_nifti), question, "--max-new-tokens", "24", *where]) == 0
        open_answer = capsys.readouterr().out.strip()
        assert cli.main(["ask", str(sample_nifti), question, "--choices", *choices, *where]) == 0
        answers[where[0]] = (open_answer, capsys.readouterr().out.strip())
    assert answers["--server"] == answers["--model"]
    assert answers["--server"][0] and answers["--server"][1][:2] in {"A.", "B.", "C.", "D."}


def test_search_through_the_server_equals_the_local_index(embedded_server, embedded_index, capsys, monkeypatch):
    url, token, _ = embedded_server
    query = "round lesion in the liver"
    assert cli.main(["search", query, "--db", str(embedded_index), "-k", "4", "--json", "--model", "embedded"]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    monkeypatch.setenv("NAPARI_MED3DVLM_SERVER", url)
    monkeypatch.setenv("NAPARI_MED3DVLM_TOKEN", token)
    assert cli.main(["search", query, "-k", "4", "--json"]) == 0
    remote = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(remote) == 4
    assert [(r["path"], r["score"]) for r in remote] == [(r["path"], r["score"]) for r in local]


def test_wrong_token_and_dead_server_are_one_line_and_exit_code_2(embedded_server, sample_nifti, tmp_path, capsys,
                                                                   dead_url):
    url, token, _ = embedded_server
    code = cli.main(["report", str(sample_nifti), "--out", str(tmp_path / "a"), "--server", url, "--token", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "refused the token" in err and "nope" not in err and len(err.strip().splitlines()) == 1
    dead = dead_url
    code = cli.main(["ask", str(sample_nifti), "What is shown?", "--server", dead])
    err = capsys.readouterr().err
    assert code == 2 and "not reachable" in err and "Traceback" not in err
    assert cli.main(["search", "liver", "--server", dead]) == 2
    assert "not reachable" in capsys.readouterr().err


def test_serve_refuses_an_outside_address_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("NAPARI_MED3DVLM_TOKEN", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_relevance_maps_through_the_server_equal_in_process(embedded_server, sample_nifti, tmp_path):
    import nibabel as nib
    import numpy as np

    url, token, _ = embedded_server
    outs = {}
    for name, where in (("local", ["--model", "embedded", "--device", "cpu"]), ("remote", ["--server", url, "--token", token])):
        outs[name] = tmp_path / name
        assert cli.main(["report", str(sample_nifti), "--out", str(outs[name]), "--max-new-tokens", "24",
                         "--relevance", *where]) == 0
    local = sorted(outs["local"].glob("report-01-where-*.nii.gz"))
    remote = sorted(outs["remote"].glob("report-01-where-*.nii.gz"))
    assert local and [p.name for p in remote] == [p.name for p in local]
    for a, b in zip(local, remote):
        left, right = nib.load(a), nib.load(b)
        np.testing.assert_allclose(right.get_fdata(), left.get_fdata(), atol=1e-5)
        np.testing.assert_array_equal(right.affine, left.affine)
    index = json.loads((outs["remote"] / "report-01-where.json").read_text())
    assert [m["span"] for m in index["maps"]] == [m["span"] for m in json.loads(
        (outs["local"] / "report-01-where.json").read_text())["maps"]]
