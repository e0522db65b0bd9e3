"""Projectors must load the reference weights and give the LLM the embeddings it was trained on."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from napari_med3dvlm.model.projector import MixerProjector, MLPProjector, build_projector

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _fixture_projector():
    tensors = load_file(str(FIXTURES / "mixer_projector.safetensors"))
    with safe_open(str(FIXTURES / "mixer_projector.safetensors"), "pt") as handle:
        cfg = json.loads(handle.metadata()["meta"])["config"]
    model = MixerProjector(
        low_input_size=cfg["low_input_size"],
        high_input_size=cfg["high_input_size"],
        low_output_size=cfg["low_output_size"],
        high_output_size=cfg["high_output_size"],
        output_dim=cfg["output_dim"],
        mlp_depth=cfg["mlp_depth"],
    ).eval()
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    return model, tensors


def test_mixer_fixture_reproduces_reference_output():
    model, tensors = _fixture_projector()
    with torch.no_grad():
        out = model(tensors["low"], tensors["high"])
    err = (out - tensors["output"]).abs().max().item()
    print(f"mixer projector: max abs err {err:.3g}")
    assert out.shape == tensors["output"].shape
    assert err <= 1e-5
    # The encoder's [s3, s4] list can be passed as is.
    with torch.no_grad():
        assert torch.equal(model([tensors["low"], tensors["high"]]), out)


def test_output_is_low_tokens_then_high_tokens():
    model, tensors = _fixture_projector()
    low, high = tensors["low"], tensors["high"]
    with torch.no_grad():
        base = model(low, high)
        changed = model(low, high + 1.0)
    n_low = model.low_output_size[-1]
    assert model.num_output_tokens == base.shape[1]
    assert torch.equal(base[:, :n_low], changed[:, :n_low])
    assert not torch.allclose(base[:, n_low:], changed[:, n_low:])


def test_mixer_rejects_mismatched_tokens():
    model, tensors = _fixture_projector()
    with pytest.raises(ValueError, match="low stream"):
        model(tensors["low"][:, :-1], tensors["high"])
    with pytest.raises(ValueError, match="high stream"):
        model(tensors["low"], tensors["high"][..., :-1])


def test_mixer_for_qwen_width_has_reference_shape_and_size():
    with torch.device("meta"):
        model = build_projector("mixer", output_dim=3584)
        out = model(torch.empty(1, 256, 384), torch.empty(1, 32, 768))
    assert tuple(out.shape) == (1, 256, 3584)
    assert sum(p.numel() for p in model.parameters()) == 47_221_248


def test_mlp_projector_keys_and_shapes():
    model = build_projector("mlp", input_size=12, output_size=20, mlp_depth=3)
    assert isinstance(model, MLPProjector)
    assert sorted(model.state_dict()) == sorted(
        f"mm_projector.{i}.{p}" for i in ("0", "1.1", "2.1") for p in ("weight", "bias")
    )
    assert model(torch.zeros(2, 5, 12)).shape == (2, 5, 20)
    assert isinstance(build_projector("linear", input_size=4, output_size=6), torch.nn.Linear)
    with pytest.raises(ValueError, match="projector_type"):
        build_projector("qformer")
