"""M3D samples -> (image, prompt, target) -> padded token batches for the VLM stages.

The prompt strings come from the one prompt builder the plugin also uses at inference time
(`napari_med3dvlm.model.prompts`), so training and inference can never drift apart. Tokenising
follows the reference: the whole ``prompt + target`` string is tokenised, the labels are -100 on the
prompt part (its length from tokenising the prompt alone) and on padding, and eos is appended when it
fits.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from napari_med3dvlm.model import prompts

CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")


def _get(item: dict, *names: str, default: Any = None) -> Any:
    """First present key among several spellings (M3D CSV columns or snake_case)."""
    for name in names:
        if name in item and item[name] is not None:
            return item[name]
    return default


def choices_of(item: dict) -> list[str] | None:
    choices = _get(item, "choices")
    if choices is None:
        found = [_get(item, key, key.replace("_", " ").title()) for key in CHOICE_KEYS]
        choices = found if all(c is not None for c in found) else None
    return [str(c) for c in choices] if choices is not None else None


def to_example(item: dict, kind: str, proj_out_num: int, rng: random.Random) -> tuple[str, str]:
    """The (prompt, target) strings of one sample, in the reference's formats."""
    if kind == "caption":
        report = str(_get(item, "text", "report", "caption"))
        return prompts.caption_example(proj_out_num, report, rng=rng)
    question = str(_get(item, "question", "Question"))
    answer = str(_get(item, "answer", "Answer"))
    if kind == "closed":
        letter = str(_get(item, "answer_choice", "Answer Choice"))
        return prompts.closed_vqa_example(proj_out_num, question, choices_of(item), letter, answer)
    return prompts.open_vqa_example(proj_out_num, question, answer)


class InstructionDataset(Dataset):
    """One M3D dataset as (image, prompt, target) samples of one kind.

    ``kind`` is caption, closed or open (yes/no questions use the open format). The caption template
    is drawn from a generator seeded by (seed, epoch, index) so that a resumed run picks the same one.
    """

    def __init__(self, base: Dataset, kind: str, proj_out_num: int, seed: int = 0):
        if kind not in ("caption", "closed", "open", "yn"):
            raise ValueError(f"unknown sample kind {kind!r}")
        self.base = base
        self.kind = "open" if kind == "yn" else kind
        self.proj_out_num = proj_out_num
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        prompt, target = to_example(item, self.kind, self.proj_out_num, rng)
        sample = {"prompt": prompt, "target": target}
        for key in ("image", "vision_low", "vision_high"):
            if key in item:
                sample[key] = torch.as_tensor(item[key])
        return sample


class MixedDataset(ConcatDataset):
    """ConcatDataset that forwards ``set_epoch`` to its parts (templates and augmentation)."""

    def task_of_each_sample(self) -> list[str]:
        """The sample kind (caption, closed, open) of every index, for batches of one task."""
        return [kind for part in self.datasets for kind in [getattr(part, "kind", "sample")] * len(part)]

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


class VLMCollator:
    """Tokenise (prompt, target) pairs into right-padded ``input_ids``, ``attention_mask``, ``labels``."""

    def __init__(self, tokenizer, max_length: int = 512):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        ids = self.tokenizer(prompt + target, add_special_tokens=False)["input_ids"][: self.max_length]
        prompt_len = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if len(ids) < self.max_length and self.tokenizer.eos_token_id is not None:
            ids = ids + [self.tokenizer.eos_token_id]
        labels = [-100] * min(prompt_len, len(ids)) + ids[prompt_len:]
        return ids, labels

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(item["prompt"], item["target"]) for item in items]
        length = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), -100, dtype=torch.long)
        attention = torch.zeros((len(items), length), dtype=torch.long)
        for row, (ids, labs) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if "vision_low" in items[0]:  # cached encoder tokens (see training.data.features)
            batch["vision_low"] = torch.stack([item["vision_low"].float() for item in items])
            batch["vision_high"] = torch.stack([item["vision_high"].float() for item in items])
        else:
            batch["images"] = torch.stack([torch.as_tensor(item["image"], dtype=torch.float32) for item in items])
        return batch


class CaptionTextCollator:
    """Images and tokenised reports for the SigLIP stage."""

    def __init__(self, tokenizer, max_length: int = 512):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        texts = [str(_get(item, "text", "report", "caption")) for item in items]
        tokens = self.tokenizer(
            texts, max_length=self.max_length, truncation=True, padding="longest", return_tensors="pt"
        )
        images = torch.stack([torch.as_tensor(item["image"], dtype=torch.float32) for item in items])
        return {"images": images, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


class PooledTextCollator:
    """Images and precomputed text vectors (`SigLIPModel.pool_text`) for a frozen text encoder.

    With the encoder frozen its output per report never changes, so the stage computes it once
    (`pool_texts`) and each step runs only the vision tower and the trainable projections.
    """

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        texts = [str(_get(item, "text", "report", "caption")) for item in items]
        images = torch.stack([torch.as_tensor(item["image"], dtype=torch.float32) for item in items])
        return {"images": images, "text_pooled": torch.stack([self.table[t] for t in texts])}


@torch.no_grad()
def pool_texts(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``{report: pooled text vector}`` for every distinct report, in batches."""
    unique = sorted(set(texts))
    table: dict[str, torch.Tensor] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        tokens = tokenizer(chunk, max_length=max_length, truncation=True, padding="longest", return_tensors="pt")
        pooled = model.pool_text(tokens["input_ids"], tokens["attention_mask"]).float()
        table.update(zip(chunk, pooled))
    return table


def cached_pool_texts(
    model, tokenizer, texts: Sequence[str], max_length: int, path: Path, encoder_id: str
) -> dict[str, torch.Tensor]:
    """`pool_texts`, kept in a safetensors file keyed by the encoder, length limit and reports.

    A resumed or repeated run skips the encoder pass, and a machine without the text encoder's
    weights can train on vectors pooled elsewhere.
    Any change to the reports or the encoder id gives a new signature, so a stale file is recomputed.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    unique = sorted(set(texts))
    signature = hashlib.sha256(json.dumps([encoder_id, int(max_length), unique]).encode("utf-8")).hexdigest()
    path = Path(path)
    if path.exists():
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("signature") == signature:
                return dict(zip(unique, handle.get_tensor("pooled")))
    table = pool_texts(model, tokenizer, unique, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"signature": signature, "encoder": encoder_id, "max_length": str(max_length), "reports": str(len(unique))}
    save_file({"pooled": torch.stack([table[t] for t in unique]).contiguous()}, str(path), metadata=metadata)
    return table
