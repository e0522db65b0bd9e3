"""The SigLIP dual encoder: offline construction, the pairwise sigmoid loss, and multi-process training."""

import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertModel, DistilBertConfig

from napari_med3dvlm.model.siglip import SigLIPConfig, SigLIPModel, pairwise_logits, sigmoid_loss

TINY_TEXT = DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=32)


def _tiny_model(**overrides):
    config = SigLIPConfig(vision_variant="nano", hidden_size=16, text_config=TINY_TEXT.to_dict(), **overrides)
    return SigLIPModel(config)


def _softplus(x):
    return math.log1p(math.exp(-x))  # = -logsigmoid(x)


def test_sigmoid_loss_matches_hand_computation_on_2x2():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    t_prime, bias = torch.tensor(math.log(2.0)), torch.tensor(-1.0)
    # I T^T = [[0.6, 1.0], [0.8, 0.0]] -> symmetrised [[0.6, 0.9], [0.9, 0.0]] -> *2 - 1
    logits = [[0.2, 0.8], [0.8, -1.0]]
    expected = (_softplus(logits[0][0]) + _softplus(logits[1][1]) + 2 * _softplus(-logits[0][1])) / 2
    loss, got_logits = sigmoid_loss(images, texts, t_prime, bias, return_logits=True)
    assert torch.allclose(got_logits, torch.tensor(logits), atol=1e-6)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_loss_is_symmetric_in_images_and_texts():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    t_prime, bias = torch.tensor(2.0), torch.tensor(-0.5)
    logits = pairwise_logits(images, texts, t_prime, bias)
    assert torch.allclose(logits, logits.t())
    assert torch.allclose(sigmoid_loss(images, texts, t_prime, bias), sigmoid_loss(texts, images, t_prime, bias))


def test_sigmoid_loss_is_lower_when_pairs_match():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(6, 16), dim=-1)
    noise = F.normalize(torch.randn(6, 16), dim=-1)
    t_prime, bias = torch.tensor(math.log(10.0)), torch.tensor(-5.0)
    losses = [
        sigmoid_loss(images, F.normalize(alpha * images + (1 - alpha) * noise, dim=-1), t_prime, bias).item()
        for alpha in (0.0, 0.5, 1.0)
    ]
    assert losses[0] > losses[1] > losses[2]
    assert sigmoid_loss(images, images.roll(1, dims=0), t_prime, bias) > losses[2]


def _toy_problem():
    generator = torch.Generator().manual_seed(1234)
    params = {
        "w_image": torch.randn(8, 4, generator=generator),
        "w_text": torch.randn(6, 4, generator=generator),
        "t_prime": torch.tensor(math.log(1 / 0.07)),
        "bias": torch.tensor(-1.0),
    }
    inputs = {"image": torch.randn(4, 8, generator=generator), "text": torch.randn(4, 6, generator=generator)}
    return params, inputs


def _toy_step(params, image, text):
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    image_features = F.normalize(image @ params["w_image"], dim=-1)
    text_features = F.normalize(text @ params["w_text"], dim=-1)
    loss = sigmoid_loss(image_features, text_features, params["t_prime"], params["bias"])
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in params.items()}


def _distributed_worker(rank, world_size, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        params, inputs = _toy_problem()
        per_rank = inputs["image"].shape[0] // world_size
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        loss, grads = _toy_step(params, inputs["image"][local], inputs["text"][local])
        for grad in grads.values():  # what DistributedDataParallel does to parameter gradients
            dist.all_reduce(grad)
            grad /= world_size
        if rank == 0:
            save_file({"loss": loss, **{f"grad.{k}": v.contiguous() for k, v in grads.items()}}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_loss_and_gradients_equal_single_process(tmp_path):
    out_file = str(tmp_path / "rank0.safetensors")
    context = mp.start_processes(
        _distributed_worker,
        args=(2, str(tmp_path / "rendezvous"), out_file),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 150
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("distributed workers did not finish in time")

    params, inputs = _toy_problem()
    loss, grads = _toy_step(params, inputs["image"], inputs["text"])
    result = load_file(out_file)
    print(f"gloo x2 loss {result['loss'].item():.6f} vs single process {loss.item():.6f}")
    assert torch.allclose(result["loss"], loss, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(result[f"grad.{name}"], grad, atol=1e-6), name


def test_published_config_builds_offline_with_reference_sizes():
    config = SigLIPConfig()  # no text_config: ClinicalBERT's DistilBERT sizes
    with torch.device("meta"):
        model = SigLIPModel(config)
    sizes = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert sizes == {
        "vision_encoder": 18_244_800,
        "language_encoder": 134_734_080,
        "mm_vision_proj": 590_592,
        "mm_language_proj": 590_592,
    }
    assert sum(p.numel() for p in model.parameters()) == 154_160_066
    assert model.t_prime.shape == () and model.bias.shape == ()


def test_initial_temperature_and_bias_follow_reference():
    model = _tiny_model()
    assert model.t_prime.item() == pytest.approx(math.log(1 / 0.07))
    assert model.bias.item() == 0.0


def test_forward_returns_normalised_features_loss_and_gradients():
    torch.manual_seed(0)
    model = _tiny_model()
    images = torch.rand(3, 1, 8, 16, 16)
    input_ids = torch.randint(1, 64, (3, 7))
    out = model(images, input_ids, torch.ones_like(input_ids))
    assert out["logits"].shape == (3, 3)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out["text_features"].norm(dim=-1), torch.ones(3), atol=1e-5)
    out["loss"].backward()
    for name in ("t_prime", "bias", "mm_vision_proj.weight", "mm_language_proj.weight"):
        assert model.get_parameter(name).grad is not None, name
    assert model.vision_encoder.encoder.s4[0].mlp.mlp[0].weight.grad is not None
    assert model.language_encoder.embeddings.word_embeddings.weight.grad is not None
    assert model.encode_image(images).shape == (3, 16)


def test_mean_pooling_ignores_padding():
    model = _tiny_model(text_pooling="mean").eval()
    ids = torch.tensor([[5, 9, 12, 3]])
    padded = torch.tensor([[5, 9, 12, 3, 0, 0]])
    with torch.no_grad():
        short = model.encode_text(ids, torch.ones_like(ids))
        long = model.encode_text(padded, torch.tensor([[1, 1, 1, 1, 0, 0]]))
    assert torch.allclose(short, long, atol=1e-5)


def test_bert_style_text_encoder_can_be_passed_in_and_keeps_its_weights():
    text_config = BertConfig(
        vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    encoder = BertModel(text_config)
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight.fill_(0.25)
    model = SigLIPModel(SigLIPConfig(vision_variant="nano", hidden_size=16), language_encoder=encoder)
    assert torch.all(model.language_encoder.embeddings.word_embeddings.weight == 0.25)
    assert model.mm_language_proj.in_features == 24
    assert model.config.text_config["model_type"] == "bert"
    assert model.encode_text(torch.tensor([[1, 2, 3]])).shape == (1, 16)


def test_save_and_reload_through_automodel(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SigLIPModel)
    images, ids = torch.rand(2, 1, 8, 16, 16), torch.randint(1, 64, (2, 5))
    with torch.no_grad():
        assert torch.allclose(model(images, ids).logits, reloaded(images, ids).logits, atol=1e-6)


def test_precomputed_text_vectors_give_the_same_loss_and_gradients_as_tokens():
    """The frozen-text-encoder training path (text pooled once per report) trains the same model."""
    from training.data.instructions import CaptionTextCollator, PooledTextCollator, pool_texts

    class Tok:
        def __call__(self, texts, max_length, truncation, padding, return_tensors):
            ids = [[1 + (ord(c) % 60) for c in t[:max_length]] for t in texts]
            width = max(len(i) for i in ids)
            return {
                "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
            }

    torch.manual_seed(0)
    model = _tiny_model(text_pooling="mean").eval()
    texts = ["cyst in the left kidney", "normal chest", "liver mass", "normal chest"]
    items = [{"image": torch.rand(1, 16, 32, 32), "text": t} for t in texts]
    table = pool_texts(model, Tok(), texts, max_length=24, batch_size=2)
    assert len(table) == 3  # one vector per distinct report
    losses, grads = [], []
    for collate in (CaptionTextCollator(Tok(), max_length=24), PooledTextCollator(table)):
        model.zero_grad()
        loss = model(**collate(items)).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.mm_language_proj.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_pooled_report_vectors_are_cached_on_disk_and_recomputed_when_reports_change(tmp_path, monkeypatch):
    """A resumed SigLIP stage reuses the pooled reports; a changed report list is pooled again."""
    from training.data import instructions

    class Tok:
        def __call__(self, texts, max_length, truncation, padding, return_tensors):
            ids = [[1 + (ord(c) % 60) for c in t[:max_length]] for t in texts]
            width = max(len(i) for i in ids)
            return {
                "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
            }

    torch.manual_seed(0)
    model = _tiny_model(text_pooling="mean").eval()
    calls = []
    original = instructions.pool_texts
    monkeypatch.setattr(instructions, "pool_texts", lambda *a, **k: calls.append(1) or original(*a, **k))
    path = tmp_path / "siglip" / "text_features.safetensors"
    texts = ["cyst in the left kidney", "normal chest", "normal chest"]
    first = instructions.cached_pool_texts(model, Tok(), texts, 24, path, "tiny:mean")
    again = instructions.cached_pool_texts(model, Tok(), texts, 24, path, "tiny:mean")
    assert len(calls) == 1 and path.exists()
    assert set(again) == set(first) and all(torch.equal(first[t], again[t]) for t in first)
    changed = instructions.cached_pool_texts(model, Tok(), texts + ["liver mass"], 24, path, "tiny:mean")
    other_encoder = instructions.cached_pool_texts(model, Tok(), texts, 24, path, "other:mean")
    assert len(calls) == 3 and "liver mass" in changed and len(other_encoder) == 2
