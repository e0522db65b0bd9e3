"""Pieces of the training package that users and the stages rely on."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from napari_med3dvlm.model import prompts
from training.config import apply_overrides, load_preset, stage_config
from training.data.augment import AugmentConfig, AugmentedDataset, augment_volume
from training.data.instructions import InstructionDataset, VLMCollator, to_example
from training.image_token import attach_image_token_rows, detach_image_token_rows
from training.loop import EpochSampler, GroupedBatchSampler, WarmupCosine


def test_overrides_keep_yaml_types_and_reach_nested_keys():
    config = apply_overrides(load_preset("demo"), ["finetune.max_steps=12", "data.image_size=[16,64,64]", "train.seed=3"])
    assert config["finetune"]["max_steps"] == 12
    assert config["data"]["image_size"] == [16, 64, 64]
    assert stage_config(config, "finetune")["seed"] == 3  # train defaults reach every stage
    with pytest.raises(ValueError):
        apply_overrides(config, ["no_equals_sign"])


def test_a_preset_with_a_base_changes_only_what_it_states(tmp_path):
    variant = tmp_path / "variant.yaml"
    variant.write_text("base: demo\noutput_dir: runs/variant\nsiglip:\n  batch_size: 128\n")
    demo, config = load_preset("demo"), load_preset(variant)
    assert config["name"] == "variant" and config["output_dir"] == "runs/variant"
    assert config["siglip"]["batch_size"] == 128
    assert {k: v for k, v in config["siglip"].items() if k != "batch_size"} == {
        k: v for k, v in demo["siglip"].items() if k != "batch_size"
    }
    assert config["finetune"] == demo["finetune"] and config["model"] == demo["model"]
    gpu = load_preset("demo_gpu")  # the shipped model's preset: demo with the SigLIP stage on a GPU
    assert gpu["finetune"] == demo["finetune"] and gpu["siglip"]["lr"] == demo["siglip"]["lr"]


def test_command_line_takes_overrides_after_the_preset():
    from training.run import parse_args

    args = parse_args(["finetune", "--preset", "demo", "finetune.max_steps=5", "train.seed=1"])
    assert args.stage == "finetune" and args.preset == "demo"
    assert args.overrides == ["finetune.max_steps=5", "train.seed=1"]


def test_demo_preset_sizes_fit_dcformer_nano_and_smollm2():
    from napari_med3dvlm.model.dcformer import stage_token_counts

    config = load_preset("demo")
    model = config["model"]
    counts = stage_token_counts(config["data"]["image_size"])
    assert [counts[3], counts[4]] == [model["low_input_size"][0], model["high_input_size"][0]] == [16, 4]
    assert model["low_output_size"][-1] + model["high_output_size"][-1] == model["proj_out_num"] == 32
    # Geometry would contradict left/right and plane statements in the phantom texts.
    augment = config["data"]["augment"]
    assert augment["rotate90_prob"] == 0 and augment["flip_prob"] == 0
    # The stage budgets leave room for loading, feature caching and merging inside 90 minutes
    # (measured: 79 budgeted minutes -> 75.8 minutes wall for `all`).
    assert sum(config[s]["max_minutes"] for s in ("siglip", "projector", "finetune", "eval")) <= 80


def test_augmentation_is_reproducible_per_sample_and_epoch():
    base = [{"image": torch.rand(1, 4, 8, 8)} for _ in range(4)]
    cfg = AugmentConfig(rotate90_prob=1.0, flip_prob=0.5)
    first, again = AugmentedDataset(base, cfg, seed=1), AugmentedDataset(base, cfg, seed=1)
    assert torch.equal(first[2]["image"], again[2]["image"])
    first.set_epoch(1)
    assert not torch.equal(first[2]["image"], again[2]["image"])
    assert AugmentConfig.from_dict({"enabled": False}) is None


def test_intensity_only_augmentation_keeps_geometry():
    image = torch.zeros(1, 4, 8, 8)
    image[0, 1, 2, 3] = 1.0
    cfg = AugmentConfig(rotate90_prob=0.0, flip_prob=0.0, scale_prob=1.0, shift_prob=1.0)
    out = augment_volume(image, cfg, torch.Generator().manual_seed(0))
    assert out.argmax() == image.argmax()
    assert not torch.equal(out, image)


def test_rotation_turns_in_plane_only():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    cfg = AugmentConfig(rotate90_prob=1.0, flip_prob=0.0, scale_prob=0.0, shift_prob=0.0)
    out = augment_volume(image, cfg, torch.Generator().manual_seed(3))
    for z in range(2):  # each slice keeps its own values: depth is never mixed in
        assert sorted(out[0, z].flatten().tolist()) == sorted(image[0, z].flatten().tolist())


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(10, seed=5), EpochSampler(10, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(10))


def test_batches_by_task_hold_one_task_each_and_follow_seed_and_epoch():
    tasks = ["caption"] * 13 + ["closed"] * 30 + ["open"] * 21
    sampler = GroupedBatchSampler(tasks, batch_size=4, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13 // 4 + 30 // 4 + 21 // 4
    assert all(len(batch) == 4 and len({tasks[i] for i in batch}) == 1 for batch in batches)
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))  # no sample twice in an epoch
    order = [tasks[batch[0]] for batch in batches]
    assert order != sorted(order)  # the tasks stay interleaved as they are mixed
    assert list(GroupedBatchSampler(tasks, batch_size=4, seed=7)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_a_mixed_dataset_names_the_task_of_each_sample():
    from training.data.instructions import InstructionDataset, MixedDataset

    captions, questions = InstructionDataset(list(range(3)), "caption", 4), InstructionDataset(list(range(2)), "yn", 4)
    mixed = MixedDataset([captions, captions, questions])
    assert mixed.task_of_each_sample() == ["caption"] * 6 + ["open"] * 2


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(warmup_steps=2, total_steps=10)
    assert schedule(0) == pytest.approx(0.5) and schedule(1) == pytest.approx(1.0)
    assert schedule(2) == pytest.approx(1.0) and schedule(10) == pytest.approx(0.0)
    assert schedule(6) == pytest.approx(0.5)


class _Tokenizer:
    """Whitespace tokenizer: one id per word, so prompt/target lengths are easy to check."""

    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (hash(w) % 50) for w in text.replace("<im_patch>", " <im_patch> ").split()]}


def test_collator_masks_the_prompt_and_appends_eos():
    collator = VLMCollator(_Tokenizer(), max_length=64)
    prompt, target = to_example(
        {"question": "Which organ?", "choices": ["Liver", "Lung", "Brain", "Kidney"], "answer": "Lung",
         "answer_choice": "B"},
        "closed", 4, random.Random(0),
    )
    assert prompt == prompts.image_prefix(4) + " Which organ? Choices: A. Liver B. Lung C. Brain D. Kidney"
    assert target == " B. Lung"
    batch = collator([{"prompt": prompt, "target": target, "image": torch.zeros(1, 2, 2, 2)},
                      {"prompt": prompt, "target": " B.", "image": torch.zeros(1, 2, 2, 2)}])
    n_prompt = len(_Tokenizer()(prompt)["input_ids"])
    labels, ids = batch["labels"], batch["input_ids"]
    assert (labels[:, :n_prompt] == -100).all()
    assert labels[0, n_prompt:].tolist() == ids[0, n_prompt:].tolist()
    assert ids[0, n_prompt + 2].item() == 1  # "B. Lung" then eos
    assert labels[1, n_prompt + 2:].eq(-100).all() and batch["attention_mask"][1, n_prompt + 2:].eq(0).all()
    assert batch["images"].shape == (2, 1, 2, 2, 2)


def test_caption_template_is_fixed_per_index_and_epoch():
    data = [{"image": torch.zeros(1), "text": "A report."}] * 3
    a, b = InstructionDataset(data, "caption", 2, seed=0), InstructionDataset(data, "caption", 2, seed=0)
    assert a[1]["prompt"] == b[1]["prompt"] and a[1]["target"] == " A report."
    assert a[1]["prompt"].startswith(prompts.image_prefix(2)) and a[1]["prompt"][len(prompts.image_prefix(2)):] in prompts.REPORT_TEMPLATES


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 3)
        self.head = nn.Linear(3, 6)

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, module):
        self.embed = module

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_only_the_image_token_row_trains():
    torch.manual_seed(0)
    lm = _TinyLM()
    before = lm.embed.weight.detach().clone()
    rows = attach_image_token_rows(lm, [5])
    assert [n for n, p in lm.named_parameters() if p.requires_grad] == ["embed.rows", "head.weight", "head.bias"]
    optimizer = torch.optim.SGD([rows.rows], lr=1.0)
    lm(torch.tensor([[5, 1, 2]])).sum().backward()
    optimizer.step()
    assert torch.equal(lm.embed.base.weight, before)  # the frozen matrix is untouched
    detach_image_token_rows(lm)
    assert isinstance(lm.embed, nn.Embedding)
    assert torch.equal(lm.embed.weight[:5], before[:5]) and not torch.equal(lm.embed.weight[5], before[5])
    assert torch.equal(lm.embed.weight[5], rows.rows.detach()[0])


def test_time_budget_fits_the_whole_schedule(tmp_path):
    import time

    from training.loop import LoopConfig, train

    data = [{"x": torch.rand(4)} for _ in range(64)]

    def slow_loss(model, batch):
        time.sleep(0.03)
        return model(batch["x"]).pow(2).mean(), {}

    cfg = LoopConfig(epochs=100, max_steps=400, batch_size=2, lr=0.1, warmup_ratio=0.1, max_minutes=0.02,
                     calibrate_steps=3, save_every=1000, log_every=1)
    model, state, _ = train(
        name="budget", model=nn.Linear(4, 1), dataset=data,
        collate_fn=lambda items: {"x": torch.stack([i["x"] for i in items])},
        compute_loss=slow_loss, cfg=cfg, output_dir=tmp_path,
    )
    assert state.finished and 3 < state.total_steps < 400 and state.global_step == state.total_steps
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) > 0.09 and lrs[-1] == pytest.approx(0.0)  # warmed up, then fully decayed
