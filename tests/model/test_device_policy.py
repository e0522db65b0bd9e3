"""One device policy (`model.device`): the inference engine, the retrieval embedder and the
distributed indexer resolve "auto" the same way, on a CUDA, an Apple and a CPU-only machine. No GPU
is needed: the machine's accelerators are monkeypatched, and no model is loaded."""

from __future__ import annotations

import pytest
import torch

from napari_med3dvlm.inference import engine as engine_module
from napari_med3dvlm.inference.engine import InferenceEngine, ModelUnavailableError
from napari_med3dvlm.inference import InferenceSettings
from napari_med3dvlm.model import device as policy
from napari_med3dvlm.retrieval import embedder as embedder_module
from napari_med3dvlm.retrieval.indexer import index_folder_distributed

#: machine -> (CUDA available, MPS available)
MACHINES = {"cuda": (True, False), "mps": (False, True), "cpu": (False, False)}
AUTO_DTYPE = {"cuda": torch.bfloat16, "mps": torch.float16, "cpu": torch.float32}


@pytest.fixture(params=sorted(MACHINES))
def machine(request, monkeypatch):
    cuda, mps = MACHINES[request.param]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(policy, "mps_available", lambda: mps)
    return request.param


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    device = policy.get_device("auto")
    assert device.type == machine
    assert policy.get_device(None) == device
    assert policy.dtype_for(device, "auto") == AUTO_DTYPE[machine]
    assert policy.dtype_for(device, "float32") == torch.float32  # an explicit dtype wins everywhere


def _engine_choice(device: str, dtype: str = "auto"):
    """(device, dtype) the engine hands its loader for these settings."""
    seen = {}

    def loader(source, device, dtype):
        seen.update(device=device, dtype=dtype)
        return torch.nn.Linear(1, 1), None

    engine = InferenceEngine(InferenceSettings(model_source="embedded", device=device, dtype=dtype), loader=loader)
    try:
        engine.load()
    finally:
        engine.unload()  # gives torch its CPU threads back
    return seen["device"], seen["dtype"]


def _embedder_choice(monkeypatch, device: str, dtype: str = "auto"):
    """(device, dtype) `get_embedder` loads SigLIP with for these settings."""
    seen = {}

    def from_source(source, device=None, window=None, dtype="auto"):
        seen.update(device=device, dtype=dtype)
        return object()

    monkeypatch.setattr(embedder_module, "_cache", {})
    monkeypatch.setattr(embedder_module.SigLIPEmbedder, "from_source", staticmethod(from_source))
    embedder_module.get_embedder("embedded", device, dtype)
    return torch.device(seen["device"]), seen["dtype"]


class _ProcessGroupAsked(Exception):
    pass


def _indexer_group_on_cpu(monkeypatch, tmp_path, embedder) -> bool:
    """The ``cpu`` flag the distributed indexer opens its process group with (gloo when True)."""
    import accelerate

    seen = {}

    def partial_state(cpu=False, **kwargs):
        seen["cpu"] = cpu
        raise _ProcessGroupAsked

    monkeypatch.setattr(accelerate, "PartialState", partial_state)
    with pytest.raises(_ProcessGroupAsked):
        index_folder_distributed(tmp_path / "db", tmp_path, embedder)
    return seen["cpu"]


class _Embedder:
    model_id, spatial_size, window = "toy", (8, 8, 8), None


class _EmbedderOn(_Embedder):
    def __init__(self, device: str):
        self.device = torch.device(device)


def test_the_engine_and_retrieval_resolve_auto_alike(machine, monkeypatch, tmp_path):
    expected = (policy.get_device("auto"), AUTO_DTYPE[machine])
    assert _engine_choice("auto") == expected
    assert _embedder_choice(monkeypatch, "auto") == expected
    # an embedder that does not say where it runs is where "auto" puts it; only CUDA uses NCCL
    assert _indexer_group_on_cpu(monkeypatch, tmp_path, _Embedder()) is (machine != "cuda")


def test_an_explicit_choice_is_kept_by_every_caller(machine, monkeypatch, tmp_path):
    assert _engine_choice("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert _embedder_choice(monkeypatch, "cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    # a CPU embedder on a GPU machine joins a CPU (gloo) process group
    assert _indexer_group_on_cpu(monkeypatch, tmp_path, _EmbedderOn("cpu")) is True


def test_an_unavailable_accelerator_is_refused_with_the_policys_sentence(machine, monkeypatch):
    missing = next(kind for kind in ("cuda", "mps") if kind != machine)
    with pytest.raises(RuntimeError, match=f"device '{missing}' was requested") as direct:
        policy.get_device(missing)
    with pytest.raises(ModelUnavailableError) as in_engine:
        _engine_choice(missing)
    assert str(in_engine.value) == str(direct.value)
    with pytest.raises(RuntimeError, match=f"device '{missing}' was requested"):
        _embedder_choice(monkeypatch, missing)


def test_every_caller_asks_the_one_policy_function(monkeypatch, tmp_path):
    """The engine holds the policy's own `get_device`; retrieval looks it up at call time, so a
    different policy (here: everything on the meta device) reaches the embedder and the indexer."""
    assert engine_module.get_device is policy.get_device
    asked = []

    def meta_policy(preference="auto"):
        asked.append(preference)
        return torch.device("meta")

    monkeypatch.setattr(policy, "get_device", meta_policy)
    device, _ = _embedder_choice(monkeypatch, "auto")
    assert device == torch.device("meta")
    assert _indexer_group_on_cpu(monkeypatch, tmp_path, _Embedder()) is True  # meta is not CUDA
    assert asked == ["auto", None]
