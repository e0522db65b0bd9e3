"""The embedded demo model with its language model served by a real vLLM (``scripts/setup-vllm.sh``
installs it; the test suite's script runs that): greedy reports and open answers equal the in-process
ones token for token, on the sample and on 10 held-out phantoms, with all requests sent at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings
from napari_med3dvlm.inference import vllm_backend as vb
from napari_med3dvlm.inference.tasks import Conversation, stream_report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not vb.vllm_installed(), reason="vLLM is not installed (bash scripts/setup-vllm.sh)"),
]

#: No training run draws phantoms from this run seed (the demo preset's splits use 0).
HELD_OUT_SEED = 7
QUESTIONS = ("Which contrast phase is this scan?", "Which organ shows an abnormality?")


def volumes():
    from napari_med3dvlm.phantoms import generate
    from napari_med3dvlm.phantoms._napari import render_sample
    from napari_med3dvlm.phantoms.writers import case_seed

    held_out = [generate(case_seed(HELD_OUT_SEED, "test", i)).volume for i in range(10)]
    return [render_sample().volume, *held_out]


@pytest.fixture(scope="module")
def served():
    """The demo engine and a vLLM server for its merged language model (one start per module)."""
    engine = InferenceEngine(InferenceSettings(device="cpu"), cache_size=16)
    process = vb.start_vllm_for(engine)
    yield engine, process, volumes()
    vb.stop_all()
    engine.unload()


def drain(generator):
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def test_greedy_reports_through_vllm_equal_in_process(served):
    engine, process, vols = served
    local = [drain(stream_report(engine, v)).text for v in vols]
    settings = engine.settings.updated(llm="vllm")
    with ThreadPoolExecutor(len(vols)) as pool:  # all at once: vLLM batches them
        remote = list(pool.map(lambda v: drain(stream_report(engine, v, settings)).text, vols))
    assert all(local) and remote == local
    assert process.is_running()


def test_greedy_open_answers_through_vllm_equal_in_process(served):
    engine, _, vols = served
    jobs = [(v, q) for v in vols for q in QUESTIONS]
    local = ["".join(Conversation().stream_answer(engine, v, q)) for v, q in jobs]
    settings = engine.settings.updated(llm="vllm")

    def remote_answer(job):
        return "".join(Conversation().stream_answer(engine, job[0], job[1], settings=settings))

    with ThreadPoolExecutor(len(jobs)) as pool:
        remote = list(pool.map(remote_answer, jobs))
    assert all(a.strip() for a in local) and remote == local
