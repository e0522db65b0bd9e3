"""Single-stream decode of the published architecture (Qwen2.5-7B + DCFormer-small) on a GPU.

Speed does not depend on the weights' values, so the model is built from the ``paper`` preset's
architecture on the meta device and given random bf16 weights on the target device: nothing is
downloaded. Measured for the engine's path (``Med3DVLMForCausalLM.generate`` with the image features,
in a background thread, tokens handed over through a streamer): time to first token (prefill of the
image tokens and the prompt) and decode tok/s; then the same with a static KV cache (and
``torch.compile``, which transformers applies to the decoding step of a static cache). The roofline is
the measured copy bandwidth of the device divided by the bytes one decoding step must read (every
weight of the language model but the embedding table, plus the KV cache).

    python benchmarks/gpu_decode.py [--tokens 128] [--rounds 3] [--device cuda]
    python benchmarks/gpu_decode.py --tiny --device cpu      # a tiny stand-in, to check the script
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

TINY_ARCHITECTURE = dict(
    model_type="qwen2", vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rope_theta=10000.0,
    rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)
TINY_VISION = dict(
    vision_variant="nano", low_input_size=[4, 128], high_input_size=[1, 256], low_output_size=[6, 4],
    high_output_size=[2, 4], proj_out_num=8,
)


def _summary(values, fmt="{:.2f}") -> str:
    return f"median {fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from training.builders import build_vlm
    from training.config import load_preset

    config = load_preset("paper")
    if tiny:
        config["model"]["language_model_architecture"] = dict(TINY_ARCHITECTURE)
        config["model"].update(TINY_VISION)
        config["data"]["image_size"] = [32, 64, 64]
    model, _ = build_vlm(config, device="meta", with_tokenizer=False)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if "norm" in name or "weight" in name else 0.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        for name, buffer in model.named_buffers():
            if "running_var" in name:
                buffer.fill_(1.0)
            elif "running_mean" in name or "num_batches" in name:
                buffer.zero_()
        for module in model.modules():  # rotary tables were skipped by to_empty's meta buffers
            if hasattr(module, "inv_freq") and hasattr(module, "rope_init_fn"):
                inv_freq, scaling = module.rope_init_fn(module.config, device)
                module.inv_freq = inv_freq
                module.original_inv_freq = inv_freq
                module.attention_scaling = scaling
    return model.to(dtype=dtype).eval(), config


class _Clock:
    """A streamer that records when each batch of new tokens arrived (the first ``put`` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(model, features, input_ids, tokens: int, device, **generate_kwargs) -> tuple[float, float]:
    """(time to first token s, decode tok/s) of one generation in a background thread."""
    clock = _Clock()
    failure = []

    def target():
        try:
            with torch.inference_mode():
                model.generate(
                    image_features=features, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=clock,
                    eos_token_id=None, pad_token_id=0, **generate_kwargs,
                )
            _sync(device)
        except BaseException as err:  # noqa: BLE001
            failure.append(err)

    _sync(device)
    start = time.perf_counter()
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    ttft = clock.times[0] - start
    decode = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0]) if len(clock.times) > 1 else float("nan")
    return ttft, decode


def copy_bandwidth(device, gib: float) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    n = int(gib * 2**30) // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * a.numel() * a.element_size() / best


def bytes_per_step(model, context: int) -> int:
    lm = model.language_model
    embedding = lm.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if p is not embedding)
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * embedding.element_size()
    return weights + kv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens after the image tokens")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--tiny", action="store_true", help="a tiny architecture (checks the script on CPU)")
    parser.add_argument("--no-static", action="store_true", help="skip the static-cache / compiled variant")
    parser.add_argument("--bandwidth-gib", type=float, default=4.0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --device cpu --tiny to check the script")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    start = time.perf_counter()
    model, config = build(args.tiny, device, dtype)
    print(f"built {'tiny stand-in' if args.tiny else 'Qwen2.5-7B + DCFormer-small'} on {device} ({dtype}) in {time.perf_counter() - start:.1f} s")
    size = tuple(config["data"]["image_size"])
    images = torch.rand(1, 1, *size, device=device, dtype=dtype)
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        features = model.encode_images(images)
        _sync(device)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        features = model.encode_images(images)
        _sync(device)
        encode_s = min(encode_s, time.perf_counter() - start)
    image_token = model.config.image_token_id if model.config.image_token_id is not None else 3
    vocab = model.language_model.get_input_embeddings().weight.shape[0]
    text = torch.randint(4, vocab - 1, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    input_ids = torch.cat([torch.full((1, model.config.proj_out_num), image_token), text], dim=1).to(device)
    if model.config.image_token_id is None:
        model.config.image_token_id = image_token

    variants = {"engine path (dynamic cache)": {}}
    if not args.no_static:
        variants["static cache + compile"] = {"cache_implementation": "static"}
    results = {}
    for name, kwargs in variants.items():
        start = time.perf_counter()
        run_once(model, features, input_ids, args.tokens, device, **kwargs)  # warm-up (compiles)
        warmup = time.perf_counter() - start
        rows = [run_once(model, features, input_ids, args.tokens, device, **kwargs) for _ in range(args.rounds)]
        results[name] = rows
        print(f"{name}: warm-up {warmup:.1f} s")
    context = input_ids.shape[1] + args.tokens // 2
    step_bytes = bytes_per_step(model, context)
    bandwidth = copy_bandwidth(device, args.bandwidth_gib if not args.tiny else 0.05)
    roofline = bandwidth / step_bytes
    print(f"encoder forward {encode_s * 1000:.0f} ms; prompt {input_ids.shape[1]} tokens; {args.tokens} new tokens")
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; {step_bytes / 1e9:.2f} GB read per step; roofline {roofline:.1f} tok/s")
    for name, rows in results.items():
        ttft = [r[0] * 1000 for r in rows]
        speed = [r[1] for r in rows]
        print(f"{name:28s} TTFT ms {_summary(ttft, '{:.0f}')}; decode tok/s {_summary(speed, '{:.1f}')}; "
              f"{statistics.median(speed) / roofline:.0%} of roofline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
