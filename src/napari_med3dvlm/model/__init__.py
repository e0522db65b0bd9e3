"""Models: DCFormer 3D encoder, projectors, the SigLIP dual encoder, the VLM and checkpoint loading.

Names are imported lazily so that ``import napari_med3dvlm.model`` (e.g. from the napari manifest)
does not pull in transformers until a model is actually needed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DCFormer": "dcformer",
    "DCFormerConfig": "dcformer",
    "MixerProjector": "projector",
    "MLPProjector": "projector",
    "build_projector": "projector",
    "SigLIPConfig": "siglip",
    "SigLIPModel": "siglip",
    "Med3DVLMConfig": "configuration",
    "Med3DVLMForCausalLM": "vlm",
    "StopOnEvent": "vlm",
    "CheckpointMismatchError": "loading",
    "ModelLoadError": "files",
    "ModelNotAvailableError": "loading",
    "PickleRefusedError": "loading",
    "load_vlm": "auto",
    "load_published": "loading",
    "load_siglip": "loading",
    "save_pretrained": "loading",
    "save_siglip": "loading",
    "is_embedded_folder": "embedded",
    "resolve_base": "bases",
    "save_embedded": "embedded",
    "load_embedded": "embedded",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
