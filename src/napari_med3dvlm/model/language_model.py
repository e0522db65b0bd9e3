"""The language model of a Med3DVLM as a plain transformers folder, for servers that know nothing of
Med3DVLM (vLLM, docs/vllm.md).

The published checkpoint stores its Qwen2.5-7B under ``model.*`` / ``lm_head.*`` next to the vision
tower and projector; the embedded demo builds its SmolLM2 from a base, new token rows and a merged
LoRA adapter. Either way the result here is the same thing: ``config.json`` of the language model
itself (``model_type`` ``qwen2`` or ``llama``), safetensors weights with transformers' own names,
the generation config and the tokenizer (with ``<im_patch>``, so token ids and the embedding matrix
line up). Image embeddings are not in it: they are computed in our process and sent as prompt
embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_language_model(model, tokenizer, folder, dtype: torch.dtype | None = None,
                        max_shard_size: str = "5GB") -> Path:
    """Write ``model.language_model`` (safetensors, sharded above ``max_shard_size``) and ``tokenizer``.

    ``dtype`` casts the weights on the way out (the model itself is left as it is)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm = model.language_model
    state = None
    if dtype is not None and next(lm.parameters()).dtype != dtype:
        state = {k: v.to(dtype) for k, v in lm.state_dict().items()}
    lm.save_pretrained(str(folder), state_dict=state, max_shard_size=max_shard_size)
    if dtype is not None:
        import json

        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config["dtype"] = str(dtype).replace("torch.", "")
        config.pop("torch_dtype", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
