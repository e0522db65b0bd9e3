"""Faults a remote user meets, against real server processes with the tiny model: a server that
restarted (it forgot the volume) is picked up by the next request, an upload over the server's cap
is one sentence, and a server that goes away between requests is 'not reachable'."""

import numpy as np
import pytest

from napari_med3dvlm.errors import ServerError
from napari_med3dvlm.inference import Conversation, InferenceSettings
from napari_med3dvlm.inference.remote import RemoteEngine
from napari_med3dvlm.io import Volume

pytestmark = pytest.mark.slow


@pytest.fixture
def volume(ct_volume):
    return Volume(ct_volume, spacing=(2.5, 0.8, 0.8))


def test_a_restarted_server_is_picked_up_by_the_next_request(tiny_model_dir, tmp_path, volume):
    from serving import TOKEN, start_server, stop_server

    args = ["--model", str(tiny_model_dir), "--device", "cpu"]
    process, url = start_server(args, tmp_path / "config", tmp_path / "a.log")
    engine = RemoteEngine(url, TOKEN, InferenceSettings(max_new_tokens=8))
    try:
        first = "".join(Conversation().stream_answer(engine, volume, "Which organ is abnormal?"))
        stop_server(process)
        with pytest.raises(ServerError, match="not reachable"):
            "".join(Conversation().stream_answer(engine, volume, "Which organ is abnormal?"))
        process, _ = start_server(args, tmp_path / "config", tmp_path / "b.log", port=int(url.rsplit(":", 1)[1]))
        again = "".join(Conversation().stream_answer(engine, volume, "Which organ is abnormal?"))
    finally:
        stop_server(process)
    assert again == first  # the volume went up again by itself, and the answer is the same


def test_an_upload_over_the_cap_is_one_sentence(tiny_model_dir, tmp_path):
    from serving import TOKEN, start_server, stop_server

    process, url = start_server(["--model", str(tiny_model_dir), "--device", "cpu", "--max-upload-mb", "1"],
                                tmp_path / "config", tmp_path / "serve.log")
    try:
        noise = np.random.default_rng(0).integers(-1000, 1000, size=(64, 128, 128)).astype(np.int16)  # ~2 MB gz
        engine = RemoteEngine(url, TOKEN, InferenceSettings(max_new_tokens=8))
        with pytest.raises(ServerError) as caught:
            engine.encode(Volume(noise))
        assert "413" in str(caught.value) and "limit" in str(caught.value)
        assert TOKEN not in str(caught.value)
    finally:
        stop_server(process)
