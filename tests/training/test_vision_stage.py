"""The vision stage: dense phantom targets through the one preprocessing path, a learning curve, and
an encoder the SigLIP stage starts from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_setup import IMAGE_SIZE, tiny_preset


def test_dense_targets_follow_the_model_input(tmp_path):
    """The cached image is what preprocessing gives for the rendered case; labels sit on its lesion."""
    from napari_med3dvlm.io import preprocess_volume
    from napari_med3dvlm.phantoms.generator import render_case
    from napari_med3dvlm.phantoms.sampling import sample_case
    from napari_med3dvlm.phantoms.writers import case_seed
    from training.data.dense import LABEL_INDEX, DenseCache, DenseSpec

    cache = DenseCache(tmp_path / "dense", DenseSpec(0, "train", 6, (32, 128, 128))).build(workers=1, progress=None)
    arrays, cases = cache.open(), cache.cases()
    for index in range(6):
        case = sample_case(case_seed(0, "train", index))
        assert cases[index]["seed"] == case.seed
        tensor, _ = preprocess_volume(render_case(case).stack, "CT", window="soft tissue", spatial_size=(32, 128, 128))
        assert np.abs(arrays["image"][index] / 255.0 - tensor[0, 0].numpy()).max() <= 0.5 / 255 + 1e-6
        for f in case.findings:
            assert arrays["labels"][index, LABEL_INDEX[(f.kind, f.site)]] == 1
        assert arrays["labels"][index].sum() == len(case.findings)
        # every painted finding kind shows up in the label map, and nothing else does
        kinds = set(np.unique(arrays["kind"][index])) - {0}
        expected = {["cyst", "mass", "calcification", "haemorrhage", "enlargement", "effusion"].index(f.kind) + 1
                    for f in case.findings}
        assert kinds <= expected and len(kinds) >= len(expected) - 1  # a tiny lesion may vanish at half resolution
    assert DenseCache(tmp_path / "dense", DenseSpec(0, "train", 6, (32, 128, 128))).complete


@pytest.mark.slow
def test_vision_stage_trains_logs_a_learning_curve_and_seeds_siglip(tmp_path, tiny_data):
    from training.run import run_stage
    from training.stages.common import load_result, subset
    from training.stages.siglip import build_siglip, init_vision_from_dense

    vision = {"epochs": 50, "max_steps": 4, "batch_size": 2, "lr": 1e-3, "save_every": 2, "evaluate_every": 2,
              "train_cases": 6, "test_cases": 4, "render_workers": 1, "layer_scale_init": 0.1}
    config = tiny_preset(tmp_path, tiny_data, vision=vision)
    config["model"]["vision_stem"] = "patchify"
    summary = run_stage(config, "vision")
    assert summary["steps"] == 4 and summary["train_cases"] == 6 and summary["stem"] == "patchify"
    assert set(summary["test_findings"]) >= {"exact", "f1", "focal_f1"}
    records = [json.loads(line) for line in (Path(config["output_dir"]) / "vision" / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in records if "eval" in r]
    assert [r["step"] for r in curve] == [2, 4] and all({"test", "train"} <= set(r["eval"]) for r in curve)
    assert curve[-1]["samples_seen"] == 8

    encoder = subset(load_result(config, "vision"), "vision_tower.")
    model, _ = build_siglip(config)
    assert init_vision_from_dense(model, config)
    for key, value in model.vision_encoder.state_dict().items():
        assert torch.equal(value, encoder[key]), key
    assert IMAGE_SIZE == tuple(config["data"]["image_size"])


def test_balanced_loss_gives_rare_lesion_cells_half_the_weight_of_their_channel():
    """A lesion filling one cell in a thousand must pull as hard as all the background of its channel:
    predicting 'no lesion anywhere' is no longer a near-zero loss."""
    from training.vision.losses import balanced_bce

    target = torch.zeros(2, 3, 10, 10, 10)
    target[0, 1, 4, 4, 4] = 1.0  # one positive cell in channel 1 out of 2,000
    all_negative = torch.full_like(target, -8.0)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(all_negative, target)
    balanced = balanced_bce(all_negative, target)
    assert plain < 0.01 < balanced  # the plain mean barely notices the missed lesion
    right = all_negative.clone()
    right[0, 1, 4, 4, 4] = 8.0
    assert balanced_bce(right, target) < 0.01
    # channels without positives are plain background means, averaged with the others
    assert torch.isclose(balanced_bce(all_negative, torch.zeros_like(target)),
                         torch.nn.functional.binary_cross_entropy_with_logits(all_negative, torch.zeros_like(target)))


def test_host_balanced_loss_penalises_firing_on_the_whole_host_organ():
    """Firing on every cell of the organ that holds the lesion costs little under `balanced_bce` (the
    organ is a small share of all negatives); with host negatives as their own group it costs as much
    as missing the lesion, and a detector that fires only on the lesion is still near zero."""
    from training.vision.losses import balanced_bce, host_balanced_bce

    target = torch.zeros(1, 1, 10, 10, 10)
    target[0, 0, 4, 4, 4] = 1.0
    host = torch.zeros(1, 1, 10, 10, 10, dtype=torch.bool)
    host[0, 0, 2:7, 2:7, 2:7] = True  # 125 cells of the host organ, one of them the lesion
    organ_prior = torch.where(host, 8.0, -8.0)
    detector = torch.full_like(target, -8.0)
    detector[0, 0, 4, 4, 4] = 8.0
    assert balanced_bce(organ_prior, target) < 0.6
    assert host_balanced_bce(organ_prior, target, host) > 2.5
    assert host_balanced_bce(detector, target, host) < 0.01
    # without host cells it is the balanced loss
    assert torch.isclose(host_balanced_bce(organ_prior, target, torch.zeros_like(host)), balanced_bce(organ_prior, target))


def test_dense_loss_trains_the_token_kind_head_on_s3_blocks(tmp_path):
    from napari_med3dvlm.phantoms.anatomy import LABEL
    from training.data.dense import FINDING_LABELS, NUM_KINDS
    from training.vision.losses import vision_loss
    from training.vision.model import DenseVisionModel

    torch.manual_seed(0)
    model = DenseVisionModel("nano", (32, 128, 128))
    batch = {
        "images": torch.rand(1, 1, 32, 128, 128),
        "kind": torch.zeros(1, NUM_KINDS, 4, 16, 16),
        "organ": torch.zeros(1, 4, 16, 16, dtype=torch.long),
        "labels": torch.zeros(1, len(FINDING_LABELS)),
    }
    batch["kind"][0, 0, 1, 5, 5] = 1.0
    batch["case_kinds"] = torch.tensor([[1.0, 0, 0, 0, 0, 0]])
    loss, parts = vision_loss(model, batch)
    assert parts["token_loss"] > 0
    loss.backward()
    assert model.token_kind.weight.grad.abs().sum() > 0
    # the host-balanced variant reads the organ map of the batch (host organ cells around the lesion)
    batch["organ"][0, :, 3:8, 3:8] = LABEL["liver"]
    host_loss, _ = vision_loss(model, batch, "host-balanced")
    assert torch.isfinite(host_loss) and not torch.isclose(host_loss, loss)


def test_case_level_auc_is_chance_for_an_organ_prior_and_one_for_a_detector():
    from training.vision.metrics import rank_auc

    truth = np.array([1, 1, 0, 0, 0], bool)
    assert rank_auc(truth, np.array([0.9, 0.8, 0.1, 0.2, 0.3])) == 1.0
    assert rank_auc(truth, np.full(5, 0.7)) == 0.5  # the same maximum in every case: no lesion read


def test_case_max_loss_lands_on_the_false_positive_cell():
    from training.vision.losses import case_max_bce

    logits = torch.full((1, 1, 4, 4, 4), -6.0, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 1, 2, 3] = 3.0  # a look-alike in a case without the kind
    case_max_bce(logits, torch.zeros(1, 1)).backward()
    grad = logits.grad[0, 0]
    assert grad[1, 2, 3] > 0 and (grad != 0).sum() == 1


def test_small_lesions_are_positives_at_every_cell_size():
    """A 2 cm calcification is about 8 label-map voxels: its cell is a full positive on the stride-8 grid
    and on a coarser one, and the case-level truth comes from the findings, not from the cells."""
    from training.data.dense import FINDING_LABELS, NUM_KINDS, case_kinds, cell_targets

    kind = np.zeros((16, 64, 64), np.uint8)
    kind[5:7, 20:22, 30:32] = 3  # 8 voxels of kind index 2 (calcification)
    organ = np.zeros_like(kind)
    for cell in (4, 8):
        presence, _ = cell_targets(kind, organ, cell)
        assert presence.shape == (NUM_KINDS,) + tuple(n // cell for n in kind.shape)
        assert presence[2].max() == 1.0 and presence[[0, 1, 3, 4, 5]].max() == 0
    labels = np.zeros(len(FINDING_LABELS), np.uint8)
    labels[[i for i, (k, _site) in enumerate(FINDING_LABELS) if k == "calcification"][0]] = 1
    assert case_kinds(labels).tolist() == [0, 0, 1, 0, 0, 0]


def test_lesion_rich_training_cases_follow_the_generator_rules():
    """The vision stage's lesion-rich sampler: reproducible, one region per case, findings at distinct
    sites under the generator's compatibility rules, several focal lesions per case on average, some
    cases with none (the negatives); the natural sampler's cache signature is unchanged."""
    from napari_med3dvlm.phantoms.case import FOCAL_KINDS
    from napari_med3dvlm.phantoms.sampling import CATALOGUE, compatible
    from training.data.dense import DenseSpec, sample_lesion_rich_case

    focal_counts = []
    for seed in range(300):
        case = sample_lesion_rich_case(seed)
        assert case.to_dict() == sample_lesion_rich_case(seed).to_dict()
        for i, f in enumerate(case.findings):
            assert CATALOGUE[(f.kind, f.organ)][0] == case.region
            assert compatible(f, case.findings[:i])
        focal_counts.append(sum(f.kind in FOCAL_KINDS for f in case.findings))
    assert 1.8 < np.mean(focal_counts) < 3.0
    assert 0.05 < np.mean(np.asarray(focal_counts) == 0) < 0.3
    assert "sampler" not in DenseSpec(0, "train", 6).signature()
    assert DenseSpec(0, "train", 6, sampler="lesion-rich").signature()["sampler"] == "lesion-rich"


@pytest.mark.slow
def test_the_stem_the_vision_stage_trains_is_the_one_every_later_model_builds(tmp_path, tiny_data):
    """``model.vision_stem`` reaches the SigLIP model, the VLM and the config.json each one writes, and
    loading that config builds the same stem; configs without the key (the published checkpoints, the
    shipped embedded model) keep the published stem and the published layout."""
    from napari_med3dvlm.model import Med3DVLMConfig, SigLIPConfig
    from napari_med3dvlm.model.dcformer import DecomposedStem, PatchifyStem
    from training.builders import build_vlm
    from training.stages.siglip import build_siglip

    config = tiny_preset(tmp_path, tiny_data)
    config["model"]["vision_stem"] = "patchify"
    siglip, _ = build_siglip(config)
    vlm, _ = build_vlm(config, with_tokenizer=False)
    assert isinstance(siglip.vision_encoder.encoder.s0[0], PatchifyStem)
    assert isinstance(vlm.vision_tower.encoder.s0[0], PatchifyStem)
    siglip.config.save_pretrained(tmp_path / "siglip")
    assert SigLIPConfig.from_pretrained(tmp_path / "siglip").vision_stem == "patchify"
    published = vlm.config.to_published_dict()
    assert published["vision_stem"] == "patchify"
    assert Med3DVLMConfig.from_published_dict(published).vision_stem == "patchify"
    assert Med3DVLMConfig.from_dict(vlm.config.to_dict()).vision_stem == "patchify"

    config["model"].pop("vision_stem")
    default, _ = build_vlm(config, with_tokenizer=False)
    assert isinstance(default.vision_tower.encoder.s0[0], DecomposedStem)
    assert "vision_stem" not in default.config.to_published_dict()
    shipped = json.loads((Path(__file__).resolve().parents[2] / "src/napari_med3dvlm/assets/demo/config.json").read_text())
    assert "vision_stem" not in shipped and Med3DVLMConfig.from_dict(shipped).vision_stem == "decomposed"


def test_the_vision_section_is_read_strictly():
    """One typed config: the demo preset is the long run; a misspelt or removed option, a wrong type or
    the stem in its old place is a one-line error naming the key and the preset, never a silent default."""
    import pytest

    from training.config import load_preset
    from training.vision.config import VisionConfig, VisionConfigError

    demo = load_preset("demo")
    vision = VisionConfig.from_preset(demo)
    assert (vision.train_sampler, vision.train_cases, vision.stem, vision.loop.max_minutes) == ("lesion-rich", 6000, "patchify", None)
    assert (vision.loop.epochs * vision.train_cases // vision.loop.batch_size, vision.evaluate_every, vision.loop.save_every) == (7500, 200, 100)
    for key, value, message in (("host_balanced_dense", True, "unknown key vision.host_balanced_dense"),
                                ("batch_sise", 16, "unknown key vision.batch_sise"),
                                ("batch_size", "16", "vision.batch_size must be an integer"),
                                ("dense_loss", "focal", "vision.dense_loss must be one of 'balanced', 'host-balanced'"),
                                ("stem", "patchify", "vision.stem is now model.vision_stem")):
        config = {**demo, "vision": {**demo["vision"], key: value}}
        with pytest.raises(VisionConfigError, match=message.replace(".", r"\.")) as err:
            VisionConfig.from_preset(config)
        assert "'demo'" in str(err.value) and "\n" not in str(err.value)


def test_the_technique_head_learns_region_phase_and_plane_from_the_case(tmp_path):
    """With ``technique_weight`` a head on the tokens the projector reads is trained on each case's
    technique (from the generator's case record, never from the input)."""
    from training.data.dense import TECHNIQUE, DenseCache, DenseDataset, DenseSpec, collate_dense, technique_targets
    from training.vision.losses import vision_loss
    from training.vision.metrics import evaluate_findings
    from training.vision.model import DenseVisionModel

    cache = DenseCache(tmp_path / "dense", DenseSpec(0, "train", 3, (32, 128, 128))).build(workers=1, progress=None)
    arrays, cases = cache.open(), cache.cases()
    arrays["technique"] = technique_targets(cases)
    for row, case in zip(arrays["technique"], cases):
        assert [values[i] for i, (_, values) in zip(row, TECHNIQUE)] == [case["region"], case["phase"], case["plane"]]
    dataset = DenseDataset(arrays)
    torch.manual_seed(0)
    model = DenseVisionModel("nano", (32, 128, 128), technique=True)
    batch = collate_dense([dataset[i] for i in range(3)])
    loss, parts = vision_loss(model, batch, technique_weight=1.0)
    without, _ = vision_loss(model, batch)
    assert parts["technique_loss"] > 0 and torch.isclose(loss, without + parts["technique_loss"], rtol=1e-4)
    loss.backward()
    assert model.technique_head.weight.grad.abs().sum() > 0
    scores = evaluate_findings(model, dataset)
    assert {"region_accuracy", "phase_accuracy", "plane_accuracy"} <= set(scores)
    assert "phase_accuracy" not in evaluate_findings(DenseVisionModel("nano", (32, 128, 128)), dataset)


@pytest.mark.slow
def test_a_vision_run_starts_from_another_runs_encoder_and_adds_the_technique_head(tmp_path, tiny_data):
    """``vision.init_from`` takes the encoder (and heads of the same shape) of a finished run, from its
    result or its resume file; with the learning rate at 0 the encoder's weights stay exactly those."""
    from training.run import run_stage
    from training.stages.common import load_result, subset
    from training.stages.vision import export_resume

    vision = {"epochs": 50, "max_steps": 2, "batch_size": 2, "lr": 1e-3, "save_every": 2, "evaluate_every": 2,
              "train_cases": 4, "test_cases": 2, "render_workers": 1, "cache_dir": str(tmp_path / "dense")}
    first = tiny_preset(tmp_path / "first", tiny_data, vision=vision)
    run_stage(first, "vision")
    source = subset(load_result(first, "vision"), "vision_tower.")
    resume = export_resume(first, tmp_path / "first.resume.safetensors")
    result = Path(first["output_dir"]) / "vision" / "final" / "trainable.safetensors"
    for name, start in (("from-result", result), ("from-resume", resume)):
        config = tiny_preset(tmp_path / name, tiny_data, vision={**vision, "lr": 0.0, "weight_decay": 0.0,
                                                                 "technique_weight": 1.0, "init_from": str(start)})
        summary = run_stage(config, "vision")
        assert summary["started_from"] == str(start)
        assert {"region_accuracy", "phase_accuracy", "plane_accuracy"} <= set(summary["test_findings"])
        encoder = subset(load_result(config, "vision"), "vision_tower.")
        weights = [k for k in source if "running_" not in k and "num_batches" not in k]  # BatchNorm stats move in train mode
        assert weights and all(torch.equal(encoder[k], source[k]) for k in weights), name
        from training.model_card import render_model_card

        assert f"The vision stage continued the weights in `{start}`" in render_model_card(config, {})
    missing = tiny_preset(tmp_path / "missing", tiny_data, vision={**vision, "init_from": str(tmp_path / "nothing")})
    from training.checks import InputError, check_stages

    with pytest.raises(InputError, match="vision.init_from: .*nothing is not a file"):
        check_stages(missing, ["vision"])
