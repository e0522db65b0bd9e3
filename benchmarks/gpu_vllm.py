"""The published language model's shape (Qwen2.5-7B) served by vLLM on a GPU: decode speed against the
card's memory-bandwidth roofline, time to first token, and 16 concurrent requests; bf16 and fp8.

Speed does not depend on the weights' values, so vLLM builds the model from the ``paper`` preset's
architecture with random weights (``--load-format dummy``): nothing is downloaded. The folder it
loads holds only ``config.json`` and a word-level tokenizer of the model's vocabulary size (token
``tN`` for id N), so that any id the random model emits can be detokenized.

Requests are what Med3DVLM sends: ``prompt_embeds`` of 256 rows (the image embeddings and a short
prompt), greedy, a fixed number of new tokens (``ignore_eos``). Measured per dtype:

- single-stream decode tok/s (token arrival times of a streamed completion, first token excluded)
  against the roofline: the copy bandwidth of the device (measured in vLLM's Python) divided by the
  bytes one decoding step reads (every language-model weight but the embedding table, at the
  weight dtype's size, plus the KV cache);
- time to first token for the 256-embedding prompt;
- aggregate tok/s of 16 concurrent streamed requests (vLLM's continuous batching).

    python benchmarks/gpu_vllm.py [--dtypes bfloat16,fp8] [--tokens 128] [--rounds 3] [--tensor-parallel-size 1]
    python benchmarks/gpu_vllm.py --tiny        # a tiny Qwen2 on CPU (float32), to check the script

Needs ``bash scripts/setup-vllm.sh`` (it installs ``vllm`` where ``nvidia-smi`` finds a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

TINY_ARCHITECTURE = dict(
    # head_dim 64: vLLM's CPU attention has no kernel for head_dim 16
    model_type="qwen2", vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, rope_theta=10000.0,
    rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
)
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}

BANDWIDTH_SNIPPET = """
import json, time, torch
device = "cuda" if torch.cuda.is_available() else "cpu"
n = int({gib} * 2**30) // 4
a = torch.empty(n, dtype=torch.float32, device=device); b = torch.empty_like(a)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
b.copy_(a); sync(); best = float("inf")
for _ in range(5):
    t = time.perf_counter(); b.copy_(a); sync(); best = min(best, time.perf_counter() - t)
name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
print(json.dumps({{"device": name, "count": torch.cuda.device_count(), "bytes_per_s": 2 * a.numel() * 4 / best}}))
"""


def _summary(values, fmt="{:.1f}") -> str:
    return f"median {fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def architecture(tiny: bool) -> dict:
    if tiny:
        return dict(TINY_ARCHITECTURE)
    from training.config import load_preset

    return dict(load_preset("paper")["model"]["language_model_architecture"])


def write_folder(folder: Path, arch: dict, dtype: str) -> Path:
    """config.json and a word-level tokenizer covering every id: all vLLM needs with dummy weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = int(arch["vocab_size"])
    eos = vocab - 1
    config = {**arch, "architectures": ["Qwen2ForCausalLM"], "bos_token_id": eos, "eos_token_id": eos,
              "torch_dtype": "float32" if dtype == "float32" else "bfloat16", "use_sliding_window": False}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=f"t{eos}", unk_token="t0",
                            model_max_length=int(arch["max_position_embeddings"])).save_pretrained(str(folder))
    return folder


def decode_bytes_per_step(arch: dict, weight_dtype: str, context: int, kv_bytes: int = 2) -> int:
    """Bytes one decoding step reads: every weight but the embedding table, plus the KV cache."""
    h, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    heads, kv_heads = arch["num_attention_heads"], arch["num_key_value_heads"]
    head_dim = arch.get("head_dim") or h // heads
    kv_dim = kv_heads * head_dim
    per_layer = h * h + 2 * h * kv_dim + h * h + 3 * h * inter  # q, k, v, o, gate/up/down
    weights = (layers * per_layer + h * arch["vocab_size"]) * WEIGHT_BYTES[weight_dtype]  # + lm_head
    small = (layers * (2 * h + h + 2 * kv_dim) + h) * 2  # norms and biases
    kv = 2 * layers * kv_dim * context * kv_bytes
    return weights + small + kv


def measure_bandwidth(python: Path, gib: float) -> dict:
    out = subprocess.run([str(python), "-c", BANDWIDTH_SNIPPET.format(gib=gib)], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def stream_times(client, embeds, params) -> tuple[float, list[tuple[float, int]]]:
    """(start, [(arrival time, tokens in the chunk)]) of one streamed completion."""
    start = time.perf_counter()
    arrivals = [(time.perf_counter(), len(chunk)) for chunk in client.stream_token_ids(embeds, params)]
    return start, arrivals


def run_dtype(dtype: str, arch: dict, folder: Path, args, bandwidth: float) -> dict:
    from napari_med3dvlm.inference.vllm_backend import VLLMClient, VLLMProcess

    serve_dtype = "float32" if dtype == "float32" else "bfloat16"
    extra = ["--load-format", "dummy", "--tensor-parallel-size", str(args.tensor_parallel_size)]
    if dtype == "fp8":
        extra += ["--quantization", "fp8"]
    if args.gpu_memory_utilization:
        extra += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    max_len = args.prompt_len + args.tokens + 16
    process = VLLMProcess(folder, dtype=serve_dtype, max_model_len=max_len, extra_args=extra,
                          startup_timeout=args.startup_timeout)
    started = time.perf_counter()
    with process:
        startup = time.perf_counter() - started
        client = VLLMClient(process.url, model="med3dvlm-lm")
        torch_dtype = torch.float32 if serve_dtype == "float32" else torch.bfloat16
        generator = torch.Generator().manual_seed(0)
        prompts = [(torch.randn(args.prompt_len, arch["hidden_size"], generator=generator) * 0.02).to(torch_dtype)
                   for _ in range(args.concurrency)]
        params = {"max_tokens": args.tokens, "min_tokens": args.tokens, "ignore_eos": True, "temperature": 0.0}
        stream_times(client, prompts[0], params)  # warm-up
        ttfts, speeds = [], []
        for r in range(args.rounds):
            start, arrivals = stream_times(client, prompts[r % len(prompts)], params)
            ttfts.append(arrivals[0][0] - start)
            later = sum(n for _, n in arrivals[1:])
            speeds.append(later / (arrivals[-1][0] - arrivals[0][0]))
        barrier = threading.Barrier(args.concurrency)

        def one(embeds):
            barrier.wait()
            _, arrivals = stream_times(client, embeds, params)
            return sum(n for _, n in arrivals), arrivals[-1][0]

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, prompts))
        wall = max(t for _, t in results) - start
        aggregate = sum(n for n, _ in results) / wall
        client.close()
    context = args.prompt_len + args.tokens // 2
    roofline = bandwidth / decode_bytes_per_step(arch, dtype, context)
    return dict(startup=startup, ttft=ttfts, decode=speeds, roofline=roofline, aggregate=aggregate)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 (CPU check of the script)")
    parser.add_argument("--dtypes", help="comma-separated: bfloat16, fp8, float16, float32 "
                        "(default bfloat16,fp8; float32 with --tiny)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=256, help="prompt embeddings per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--startup-timeout", type=float, default=420.0)
    parser.add_argument("--bandwidth-gib", type=float, help="size of the copy that measures bandwidth")
    args = parser.parse_args(argv)

    from napari_med3dvlm.inference.vllm_backend import vllm_python

    python = vllm_python()
    if python is None or not python.exists():
        print("error: vLLM is not installed; run `bash scripts/setup-vllm.sh`")
        return 2
    dtypes = (args.dtypes or ("float32" if args.tiny else "bfloat16,fp8")).split(",")
    arch = architecture(args.tiny)
    info = measure_bandwidth(python, args.bandwidth_gib or (0.25 if args.tiny else 2.0))
    bandwidth = info["bytes_per_s"]
    shape = "tiny Qwen2" if args.tiny else "Qwen2.5-7B-shaped"
    print(f"device: {info['device']} (x{max(1, info['count'])}), copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
          f"{shape} language model, random weights; prompt {args.prompt_len} embeddings, {args.tokens} new tokens, "
          f"tensor parallel {args.tensor_parallel_size}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "lm", arch, dtypes[0])
        for dtype in dtypes:
            try:
                r = run_dtype(dtype, arch, folder, args, bandwidth)
            except Exception as err:  # noqa: BLE001 - one dtype failing (fp8 on an old card) leaves the rest
                print(f"{dtype}: failed: {' '.join(str(err).split())[:300]}")
                continue
            decode = statistics.median(r["decode"])
            print(f"{dtype}: server start {r['startup']:.0f} s")
            print(f"{dtype}: single-stream decode tok/s {_summary(r['decode'])}; roofline {r['roofline']:.1f} tok/s "
                  f"({100 * decode / r['roofline']:.0f}% of roofline)")
            print(f"{dtype}: TTFT ({args.prompt_len} embeddings) ms {_summary([1000 * t for t in r['ttft']])}")
            print(f"{dtype}: {args.concurrency} concurrent requests: {r['aggregate']:.1f} tok/s aggregate "
                  f"({r['aggregate'] / decode:.1f}x single stream)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
