"""``napari-med3dvlm export-llm``: a model's language model as a plain transformers folder, the folder
a vLLM server loads (``vllm serve FOLDER --enable-prompt-embeds``, docs/vllm.md).

For the published checkpoint that is its Qwen2.5-7B as an ordinary Qwen2 folder; for the embedded
demo, the merged SmolLM2 (base, new token rows and LoRA adapter in one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPE_CHOICES = ("bfloat16", "float16", "float32")


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export-llm",
        help="write a model's language model as a plain transformers folder (for vLLM)",
        description="Write the language model of MODEL ('embedded', a model folder in the published "
        "layout or an embedded-format folder) with its tokenizer to OUT, as a folder that vLLM and "
        "transformers load without Med3DVLM code.",
    )
    export.add_argument("model", metavar="MODEL", help="'embedded' or a model folder")
    export.add_argument("out", metavar="OUT", type=Path, help="the folder to write (created)")
    export.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="bfloat16",
        help="the weights' dtype (default bfloat16, as published; float32 for CPU vLLM that must match "
        "in-process float32 token for token)",
    )
    export.set_defaults(func=run_export, quick_exit=True)


def run_export(args) -> int:
    import torch

    from napari_med3dvlm.model import load_vlm
    from napari_med3dvlm.model.files import ModelLoadError
    from napari_med3dvlm.model.language_model import save_language_model
    from napari_med3dvlm.model.loading import ModelNotAvailableError

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out} exists and is not an empty folder", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    try:
        model, tokenizer = load_vlm(args.model, device="cpu", dtype=dtype)
    except (ModelLoadError, ModelNotAvailableError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    save_language_model(model, tokenizer, out, dtype=dtype)
    lm = model.language_model
    params = sum(p.numel() for p in lm.parameters())
    print(f"{lm.config.model_type} language model ({params / 1e6:.1f} M parameters, {args.dtype}) written to {out}")
    return 0
