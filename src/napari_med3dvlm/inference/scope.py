"""Is this input inside what the engine's model knows? `napari_med3dvlm.model.scope` holds the
profile stored beside the weights and the checks; this runs them for one `io.Volume` with the
engine's current model (and the features it produced for the volume).
"""

from __future__ import annotations

from napari_med3dvlm.model.scope import ScopeResult, check_volume, profile_for


def check_input(engine, volume, features=None) -> ScopeResult:
    """`check_volume` for an `io.Volume` and the engine's current model.

    ``features``: the `EncodedImage` (or tensor) the engine produced for this volume; without it
    the volume is encoded here (from the engine's cache when it was encoded before). Volumes the
    model cannot encode at all (a single slice) get the model-free reasons only.
    """
    profile = profile_for(engine.settings.model_source)
    if features is None and profile.features.get("vlm") is not None:
        try:
            features = engine.encode(volume)
        except ValueError:  # too thin to preprocess: the slice check says why
            features = None
    if features is not None and hasattr(features, "features"):
        features = features.features
    return check_volume(volume.data, volume.modality, volume.spacing, volume.plane, profile, features, "vlm")


def reasons(engine, volume) -> list[str]:
    """Plain-language reasons the volume is outside what the engine's model knows (empty: in scope)."""
    return check_input(engine, volume).messages
