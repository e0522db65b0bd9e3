"""The vLLM backend's own parts, against a stand-in server that speaks vLLM's completions protocol and
decodes with the tiny model in-process: what is sent (the spliced prompt embeddings), what comes back
(text pieces as the in-process streamer makes them), cancelling, errors, the process manager, the
batch report and ``export-llm``. The same paths against a real vLLM: test_vllm_equality.py."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from napari_med3dvlm.cli import main
from napari_med3dvlm.inference import ModelUnavailableError
from napari_med3dvlm.inference import vllm_backend as vb
from napari_med3dvlm.inference.tasks import Conversation, stream_report
from napari_med3dvlm.io import Volume
from napari_med3dvlm.model.prompts import report_prompt


class StandIn:
    """A loopback HTTP server answering /v1/models and /v1/completions (SSE or JSON) by greedy decoding
    the received prompt embeddings with ``lm`` (the engine's language model)."""

    def __init__(self, lm, eos: int, delay: float = 0.0, fail_with: tuple[int, str] | None = None):
        self.lm, self.eos, self.delay, self.fail_with = lm, eos, delay, fail_with
        self.bodies: list[dict] = []
        self.closed_early = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status, value):
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._json(200, {"data": [{"id": "stand-in"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                if owner.fail_with:
                    return self._json(owner.fail_with[0], {"error": {"message": owner.fail_with[1]}})
                ids = owner.decode(body)
                if not body.get("stream"):
                    return self._json(200, {"choices": [{"index": 0, "text": "", "token_ids": ids}]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for token in ids:
                        time.sleep(owner.delay)
                        event = {"choices": [{"index": 0, "text": "", "token_ids": [token]}]}
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    owner.closed_early.set()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def decode(self, body) -> list[int]:
        # The test's own tensor, sent by our client: read back with weights_only.
        embeds = torch.load(io.BytesIO(base64.b64decode(body["prompt_embeds"])), weights_only=True)
        assert body["temperature"] == 0.0 and body["stop_token_ids"] == [self.eos]
        with torch.inference_mode():
            out = self.lm.generate(
                inputs_embeds=embeds[None], attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                max_new_tokens=body["max_tokens"], do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos,
            )
        return out[0].tolist()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in(engine):
    model, tokenizer = engine.load()
    server = StandIn(model.language_model, tokenizer.eos_token_id)
    yield server
    server.close()
    vb.stop_all()


@pytest.mark.slow
def test_sent_embeddings_are_the_in_process_ones_and_text_matches(engine, ct_volume, stand_in):
    encoded = engine.encode(Volume(ct_volume))
    prompt = report_prompt(engine.proj_out_num)
    local = list(engine.stream(prompt, encoded))
    remote = list(engine.stream(prompt, encoded, engine.settings.updated(llm="vllm", vllm_url=stand_in.url)))
    assert remote == local and "".join(local).strip()  # the same pieces, not only the same text
    model, tokenizer = engine.load()
    sent = torch.load(io.BytesIO(base64.b64decode(stand_in.bodies[0]["prompt_embeds"])), weights_only=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert torch.equal(sent, model.prepare_inputs_embeds(ids, encoded.features)[0])
    assert stand_in.bodies[0]["max_tokens"] == engine.settings.max_new_tokens
    assert stand_in.bodies[0]["model"] == "stand-in"  # asked from /v1/models for a server we did not start


def test_sampling_settings_reach_the_request(engine):
    settings = engine.settings.updated(temperature=0.7, top_p=0.8, seed=5, max_new_tokens=9)
    params = vb.sampling_params(settings, None, 2)
    assert params == {"max_tokens": 9, "seed": 5, "temperature": 0.7, "top_p": 0.8, "stop_token_ids": [2]}
    assert vb.sampling_params(settings.updated(temperature=0.0), None, None)["temperature"] == 0.0


@pytest.mark.slow
def test_cancel_stops_between_tokens_and_closes_the_request(engine, ct_volume, stand_in):
    stand_in.delay = 0.05
    settings = engine.settings.updated(llm="vllm", vllm_url=stand_in.url, max_new_tokens=24)
    cancel = threading.Event()
    stream = stream_report(engine, Volume(ct_volume), settings, cancel)
    pieces = [next(stream)]
    cancel.set()
    start = time.perf_counter()
    try:
        while True:
            pieces.append(next(stream))
    except StopIteration as stop:
        record = stop.value
    assert time.perf_counter() - start < 0.5
    assert record.stopped and record.text.startswith(pieces[0].strip())
    assert stand_in.closed_early.wait(3.0)  # vLLM aborts a request whose connection closes


def test_a_server_that_does_not_answer_is_a_clear_error(engine, ct_volume):
    settings = engine.settings.updated(llm="vllm", vllm_url=f"http://127.0.0.1:{vb.free_port()}")
    encoded = engine.encode(Volume(ct_volume))
    with pytest.raises(ModelUnavailableError, match="does not answer.*'transformers'"):
        list(engine.stream(report_prompt(engine.proj_out_num), encoded, settings))
    vb.stop_all()


def test_a_refused_request_says_why(engine, ct_volume):
    model, tokenizer = engine.load()
    server = StandIn(model.language_model, tokenizer.eos_token_id, fail_with=(400, "prompt is too long"))
    try:
        settings = engine.settings.updated(llm="vllm", vllm_url=server.url)
        with pytest.raises(ModelUnavailableError, match=r"HTTP 400.*prompt is too long"):
            list(engine.stream(report_prompt(engine.proj_out_num), engine.encode(Volume(ct_volume)), settings))
    finally:
        server.close()
        vb.stop_all()


def test_open_answers_through_the_client_equal_in_process(engine, ct_volume, stand_in):
    volume = Volume(ct_volume)
    local = "".join(Conversation().stream_answer(engine, volume, "Which organ is abnormal?"))
    settings = engine.settings.updated(llm="vllm", vllm_url=stand_in.url)
    engine.update_settings(settings)
    remote = "".join(Conversation().stream_answer(engine, volume, "Which organ is abnormal?"))
    assert remote == local


@pytest.mark.slow
def test_complete_many_keeps_the_order(engine, ct_volume, stand_in):
    model, tokenizer = engine.load()
    encoded = engine.encode(Volume(ct_volume))
    embeds = [vb.prompt_embeds(model, tokenizer, report_prompt(engine.proj_out_num, f"Describe finding {i}."), encoded.features)
              for i in range(3)]
    client = vb.VLLMClient(stand_in.url)
    params = vb.sampling_params(engine.settings, None, tokenizer.eos_token_id)
    assert client.complete_many(embeds, params) == [stand_in.decode({**params, "prompt_embeds": vb.encode_prompt_embeds(e)}) for e in embeds]
    client.close()


def test_batch_report_writes_the_sequential_files(engine, ct_volume, stand_in, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    paths = []
    for i in range(3):
        data = ct_volume.copy()
        data[4 + i : 8 + i, 10:20, 10:20] += 80
        path = tmp_path / f"scan{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
        paths.append(str(path))
    common = ["--model", engine.settings.model_source, "--device", "cpu", "--max-new-tokens", "24"]
    assert main(["report", *paths, "--out", str(tmp_path / "seq"), *common]) == 0
    assert main(["report", *paths, "--out", str(tmp_path / "batch"), *common, "--vllm-url", stand_in.url]) == 0
    out = capsys.readouterr().out
    assert "3 report(s) written" in out and len(stand_in.bodies) == 3
    for name in ("report-01", "report-02", "report-03"):
        seq = json.loads((tmp_path / "seq" / f"{name}.json").read_text())
        batch = json.loads((tmp_path / "batch" / f"{name}.json").read_text())
        assert batch["report"] == seq["report"] and batch["report"]
        assert batch["generation"]["llm"] == "vllm" and seq["generation"]["llm"] == "transformers"


# ------------------------------------------------------------------------------------------ process manager
FAKE_SERVER = r'''
import sys, json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer as HTTPServer
args = sys.argv[1:]
if "--exit-at-once" in args:
    print("fake vLLM: cannot load the model", flush=True)
    sys.exit(3)
port = int(args[args.index("--port") + 1])
assert args[args.index("--host") + 1] == "127.0.0.1" and "--enable-prompt-embeds" in args
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({"data": [{"id": "med3dvlm-lm"}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_POST(self):  # streams ids 5, 6, 7, ... slowly (an answer of max_tokens tokens)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
        for i in range(body["max_tokens"]):
            time.sleep(0.05)
            event = {"choices": [{"index": 0, "text": "", "token_ids": [5 + i]}]}
            self.wfile.write(("data: " + json.dumps(event) + "\n\n").encode()); self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n"); self.wfile.flush()
        self.close_connection = True
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.fixture
def fake_vllm(tmp_path):
    """A stand-in 'python' that runs a tiny server whatever module it is asked to run."""
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nshift 2\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text("{}")
    return python, lm


@pytest.mark.slow
def test_process_starts_on_loopback_restarts_after_a_kill_and_stops(fake_vllm, tmp_path):
    import httpx

    python, lm = fake_vllm
    process = vb.VLLMProcess(lm, python=python, log_path=tmp_path / "vllm.log", startup_timeout=20)
    with process:
        assert httpx.get(f"{process.url}/v1/models").json()["data"][0]["id"] == "med3dvlm-lm"
        first_pid = process.pid
        os.kill(first_pid, 9)  # the user (or the OOM killer) ends vLLM
        process._popen.wait(5)
        client = vb.VLLMClient(process.url, model="m", process=process)
        with pytest.raises(vb.VLLMError, match=r"vLLM stopped \(exit code -9; its log: .*vllm.log\)"):
            client.complete_token_ids(torch.zeros(2, 4), {})
        process.ensure_running()
        assert process.is_running() and process.pid != first_pid and process.starts == 2
        client.close()
    assert not process.is_running()


@pytest.mark.slow
def test_the_engine_starts_vllm_for_its_model_and_starts_it_again_after_a_kill(engine, ct_volume, fake_vllm,
                                                                                monkeypatch, tmp_path):
    python, _ = fake_vllm
    monkeypatch.setenv(vb.PYTHON_ENV, str(python))
    monkeypatch.setenv("NAPARI_MED3DVLM_CACHE", str(tmp_path / "cache"))
    _, tokenizer = engine.load()
    expected = tokenizer.decode(list(range(5, 11)), skip_special_tokens=True)
    engine.update_settings(engine.settings.updated(llm="vllm", max_new_tokens=6))
    encoded = engine.encode(Volume(ct_volume))
    prompt = report_prompt(engine.proj_out_num)
    try:
        assert engine.generate(prompt, encoded) == expected
        process = vb.start_vllm_for(engine)  # the server the engine started: one per model folder
        folder = process.model_folder
        assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
        first = process.pid
        killer = threading.Timer(0.4, os.kill, (first, 9))  # killed mid-answer (60 tokens take 3 s)
        killer.start()
        with pytest.raises(ModelUnavailableError, match=r"vLLM stopped \(exit code -9; its log: .*\.log\); the next"):
            list(engine.stream(prompt, encoded, engine.settings.updated(max_new_tokens=60)))
        killer.join()
        assert engine.generate(prompt, encoded) == expected  # the next request starts it again
        assert vb.start_vllm_for(engine) is process and process.pid != first and process.is_running()
    finally:
        vb.stop_all()


def test_a_server_that_exits_while_starting_names_its_log(fake_vllm, tmp_path):
    python, lm = fake_vllm
    process = vb.VLLMProcess(lm, python=python, log_path=tmp_path / "vllm.log", extra_args=["--exit-at-once"])
    with pytest.raises(vb.VLLMError, match=r"stopped while starting \(exit code 3\); its log: .*vllm.log"):
        process.start()
    assert "cannot load the model" in (tmp_path / "vllm.log").read_text()


def test_missing_vllm_says_how_to_install(tmp_path, monkeypatch):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text("{}")
    monkeypatch.setenv(vb.PYTHON_ENV, str(tmp_path / "no-such-python"))
    with pytest.raises(vb.VLLMError, match="scripts/setup-vllm.sh"):
        vb.VLLMProcess(lm).start()


def test_cli_options_select_vllm(engine):
    from napari_med3dvlm.cli import build_parser
    from napari_med3dvlm.inference.cli import engine_from_args

    args = build_parser().parse_args(["ask", "x.nii.gz", "q?", "--llm", "vllm", "--vllm-url", "http://127.0.0.1:9/"])
    settings = engine_from_args(args).settings
    assert settings.llm == "vllm" and settings.vllm_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="llm must be one of"):
        engine.settings.updated(llm="tgi")


# ------------------------------------------------------------------------------------------ export-llm
def test_export_llm_writes_a_plain_qwen2_folder_of_the_published_checkpoint(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from napari_med3dvlm.model import load_vlm, save_pretrained
    from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM

    loading_tests = _load_test_module("tests/model/test_loading.py")
    folder = tmp_path / "published"
    folder.mkdir()
    tokenizer = loading_tests.write_published_tokenizer(folder)
    torch.manual_seed(0)
    save_pretrained(Med3DVLMForCausalLM(loading_tests.tiny_config(len(tokenizer))).eval(), tokenizer, folder)

    out = tmp_path / "qwen2"
    assert main(["export-llm", str(folder), str(out), "--dtype", "float32"]) == 0
    assert "qwen2 language model" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    lm = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert exported_tokenizer.convert_tokens_to_ids("<im_patch>") == tokenizer.convert_tokens_to_ids("<im_patch>")

    model, _ = load_vlm(str(folder), device="cpu", dtype=torch.float32)
    ids = tokenizer("<im_patch>" * 8 + " What organ has a mass?", return_tensors="pt").input_ids
    embeds = model.prepare_inputs_embeds(ids, torch.randn(1, 8, 64))
    with torch.inference_mode():
        assert torch.equal(lm(inputs_embeds=embeds).logits, model.language_model(inputs_embeds=embeds).logits)

    assert main(["export-llm", str(folder), str(out)]) == 2  # never over an existing folder
    assert "not an empty folder" in capsys.readouterr().err


def _load_test_module(relative: str):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / relative
    spec = importlib.util.spec_from_file_location("med3dvlm_tests_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
