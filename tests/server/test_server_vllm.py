"""`serve --llm vllm`: the language model in a vLLM that the server starts on loopback and keeps
running; clients see the in-process text, and a killed vLLM is a clear error, then a restart."""

import json

import psutil
import pytest

from napari_med3dvlm import cli
from napari_med3dvlm.inference import set_engine
from napari_med3dvlm.inference.vllm_backend import vllm_installed

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not vllm_installed(), reason="vLLM's environment (scripts/setup-vllm.sh) is missing")]


@pytest.fixture
def vllm_server(tmp_path):
    from serving import TOKEN, start_server, stop_server

    process, url = start_server(["--model", "embedded", "--device", "cpu", "--llm", "vllm"], tmp_path / "config",
                                tmp_path / "serve.log", timeout=600)
    yield url, TOKEN, process
    started = _vllm_children(process)
    stop_server(process)
    assert process.returncode == 0
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], \
        "the server left its vLLM running"


def _vllm_children(process):
    return [p for p in psutil.Process(process.pid).children(recursive=True)
            if "vllm.entrypoints" in " ".join(p.cmdline())]


def test_serve_with_vllm_answers_as_in_process_and_survives_a_killed_vllm(vllm_server, sample_nifti, tmp_path,
                                                                          config_dir, capsys):
    url, token, process = vllm_server
    previous = set_engine(None)
    try:
        assert _vllm_children(process), "serve --llm vllm did not start vLLM"
        outs = {}
        for name, where in (("local", ["--model", "embedded", "--device", "cpu"]),
                            ("remote", ["--server", url, "--token", token])):
            assert cli.main(["report", str(sample_nifti), "--out", str(tmp_path / name), "--max-new-tokens", "48",
                             *where]) == 0
            outs[name] = json.loads((tmp_path / name / "report-01.json").read_text())["report"]
        assert outs["remote"] == outs["local"] != ""

        for child in _vllm_children(process):
            child.kill()
        capsys.readouterr()
        code = cli.main(["ask", str(sample_nifti), "Which organ shows an abnormality?", "--server", url,
                         "--token", token, "--max-new-tokens", "24"])
        first = capsys.readouterr()
        assert code in (0, 2)
        if code == 2:  # the request in flight saw the kill: one line naming vLLM
            assert "vLLM" in first.err and "Traceback" not in first.err
            assert cli.main(["ask", str(sample_nifti), "Which organ shows an abnormality?", "--server", url,
                             "--token", token, "--max-new-tokens", "24"]) == 0
            first = capsys.readouterr()
        assert cli.main(["ask", str(sample_nifti), "Which organ shows an abnormality?", "--model", "embedded",
                         "--device", "cpu", "--max-new-tokens", "24"]) == 0
        assert first.out.strip() == capsys.readouterr().out.strip() != ""
        assert _vllm_children(process), "vLLM was not started again"
    finally:
        set_engine(previous)
