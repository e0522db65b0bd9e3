"""DCFormer must reproduce the reference encoder bit-for-bit-ish and refuse mis-shaped volumes."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napari_med3dvlm.model.dcformer import (
    DCFormer,
    DCFormerConfig,
    feature_map_to_tokens,
    stage_token_counts,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# docs/reference-model.md, "DCFormer": parameter counts of the reference variants.
REFERENCE_PARAMS = {
    "nano": 789_216,
    "naive": 5_851_680,
    "tiny": 14_657_472,
    "small": 18_244_800,
    "base": 33_868_864,
    "large": 185_125_440,
}


def _split_fixture(name):
    tensors = load_file(str(FIXTURES / name))
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    return tensors, weights


def test_nano_fixture_loads_strictly_and_matches_reference_hidden_states():
    tensors, weights = _split_fixture("dcformer_nano.safetensors")
    model = DCFormer(DCFormerConfig(variant="nano")).eval()
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        hidden_states = model(tensors["input"])
    assert len(hidden_states) == 5
    for i, got in enumerate(hidden_states):
        expected = tensors[f"hidden_states.{i}"]
        assert got.shape == expected.shape
        err = (got - expected).abs().max().item()
        print(f"dcformer nano stage {i}: max abs err {err:.3g}")
        assert err <= 1e-5


@pytest.mark.parametrize("variant", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(variant):
    with torch.device("meta"):
        model = DCFormer(DCFormerConfig(variant=variant))
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[variant]


def test_token_counts_follow_ceil_division_for_odd_sizes():
    model = DCFormer(DCFormerConfig(variant="nano")).eval()
    size = (9, 20, 36)
    with torch.no_grad():
        hidden_states = model(torch.rand(2, 1, *size))
    assert [h.shape[1] for h in hidden_states] == stage_token_counts(size)
    assert [h.shape[2] for h in hidden_states] == list(model.hidden_sizes)
    assert all(h.shape[0] == 2 for h in hidden_states)
    assert stage_token_counts((128, 256, 256))[-2:] == [256, 32]


def test_tokens_are_depth_major():
    # (B, C, H, W, D) map whose value encodes its (h, w, d) position.
    h, w, d = 2, 3, 4
    hh, ww, dd = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(d), indexing="ij")
    feature_map = (dd * 100 + hh * 10 + ww).float()[None, None]
    tokens = feature_map_to_tokens(feature_map)[0, :, 0]
    expected = torch.tensor([di * 100 + hi * 10 + wi for di in range(d) for hi in range(h) for wi in range(w)])
    assert torch.equal(tokens, expected.float())


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 32, 64, 64), "5-D"),  # channel axis missing
        ((1, 32, 64, 64, 1), "channel"),  # channels-last
        ((1, 3, 32, 64, 64), "channel"),  # RGB-like input
    ],
)
def test_rejects_wrong_layout_with_clear_error(shape, message):
    model = DCFormer(DCFormerConfig(variant="nano"))
    with pytest.raises(ValueError, match=message) as info:
        model(torch.zeros(shape))
    assert "depth" in str(info.value)


def test_expected_input_size_catches_permuted_volume():
    model = DCFormer(DCFormerConfig(variant="nano", expected_input_size=(16, 32, 32))).eval()
    with pytest.raises(ValueError, match="wrong features"):
        model(torch.zeros(1, 1, 32, 32, 16))
    assert len(model(torch.zeros(1, 1, 16, 32, 32))) == 5


def test_config_round_trips_and_rejects_unknown_variant():
    config = DCFormerConfig(variant="tiny", expected_input_size=(128, 256, 256))
    again = DCFormerConfig.from_dict(config.to_dict())
    assert again == config
    assert again.channels == (64, 96, 192, 384, 768)
    with pytest.raises(ValueError, match="variant"):
        DCFormerConfig(variant="huge")


def _with_running_statistics(model):
    """Eval-mode BatchNorm with non-trivial statistics and layer scales that matter, so that a wrong
    fold or a wrong tap shows in the outputs."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                param.fill_(0.1)
    return model.eval()


@pytest.mark.parametrize("size", [(16, 32, 32), (30, 34, 17)])
def test_cpu_inference_runs_the_fused_stem_and_gives_the_reference_outputs(size, monkeypatch):
    """The default CPU inference path (stem as matrix products, BatchNorm folded) is the same
    function as the reference execution: batches and sizes that are no multiple of 4 too."""
    from napari_med3dvlm.model.dcformer import DecomposedStem, LAYOUT_ENV

    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    torch.manual_seed(0)
    model = _with_running_statistics(DCFormer(DCFormerConfig(variant="nano")))
    reference = DCFormer(DCFormerConfig(variant="nano")).eval()
    reference.load_state_dict(model.state_dict())
    reference.memory_format = "contiguous"
    calls = []
    original = DecomposedStem.forward_fused
    monkeypatch.setattr(DecomposedStem, "forward_fused", lambda self, x: calls.append(x.shape[0]) or original(self, x))
    images = torch.rand(2, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = model(images)
        expected = reference(images)
    assert calls == [2]
    for got, want in zip(fused, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert got.abs().max() > 0.1  # outputs that carry signal, not a vacuous match


def test_training_and_gradients_run_the_reference_execution(monkeypatch):
    """Folding BatchNorm is only valid with frozen statistics: a forward that trains or builds a
    graph takes the reference path (and its gradients), as does the explicit reference setting."""
    from napari_med3dvlm.model.dcformer import DecomposedStem, LAYOUT_ENV

    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    calls = []
    monkeypatch.setattr(DecomposedStem, "forward_fused", lambda self, x: calls.append(1))
    model = DCFormer(DCFormerConfig(variant="nano"))
    images = torch.rand(2, 1, 16, 32, 32)  # two: training BatchNorm needs more than one value
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()
    model(images)[-1].sum().backward()
    model.memory_format = "contiguous"
    with torch.no_grad():
        model(images)
    model.memory_format = "auto"
    monkeypatch.setenv(LAYOUT_ENV, "contiguous")
    with torch.no_grad():
        model(images)
    assert calls == []


def test_channels_last_is_used_only_for_single_volumes_and_matches_the_reference_layout():
    """The opt-in channels-last execution (the CUDA default) runs single volumes without autograd
    in NDHWC; batches keep the contiguous layout (channels-last 3-D convolutions corrupted the heap
    for batches on torch's CPU build)."""
    torch.manual_seed(0)
    model = DCFormer(DCFormerConfig(variant="nano")).eval()
    model.memory_format = "channels_last"
    reference = DCFormer(DCFormerConfig(variant="nano")).eval()
    reference.load_state_dict(model.state_dict())
    reference.memory_format = "contiguous"
    seen = []
    hook = model.encoder.register_forward_pre_hook(  # channels-last: the channel stride is 1
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d) and args[0].stride(1) == 1)
    )
    images = torch.rand(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        single = model(images[:1])
        batch = model(images)
        expected = reference(images)
    hook.remove()
    assert seen == [True, False]
    for got, want in zip(single, expected):
        torch.testing.assert_close(got, want[:1], rtol=0, atol=1e-5)
    for got, want in zip(batch, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_published_stem_reads_10_of_64_voxels_and_the_patchify_option_reads_all():
    """The published stem's stride-4 one-axis kernels only reach voxels on lines through the stride-4
    lattice; the research `patchify` stem reads every voxel at the same output shape (odd sizes too)."""
    from napari_med3dvlm.model.dcformer import DCFormerEncoder

    torch.manual_seed(0)
    read = {}
    for stem in ("decomposed", "patchify"):
        encoder = DCFormerEncoder(DCFormerConfig(variant="nano", stem=stem)).eval()
        x = torch.rand(1, 1, 32, 32, 32, requires_grad=True)
        encoder.s0(x).abs().sum().backward()
        read[stem] = float((x.grad != 0).float().mean())
        odd = encoder(torch.rand(1, 1, 30, 34, 17))
        assert [tuple(m.shape[2:]) for m in odd][0] == (8, 9, 5)
    assert read["decomposed"] == pytest.approx(10 / 64, abs=0.01)
    assert read["patchify"] == 1.0
    with pytest.raises(ValueError, match="stem"):
        DCFormerConfig(variant="nano", stem="conv")
