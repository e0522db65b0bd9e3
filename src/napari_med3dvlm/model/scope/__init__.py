"""Is this volume inside what the model knows? Plain-language reasons when it is not.

A model always answers, also for a scan unlike anything it was trained on (a real head CT given to
the phantom demo model, an MR given to a CT model). Two kinds of checks say when that happens:

- **Model-free:** the modality against the model's modalities; a 2-D image or a localizer (too few
  slices); values that cannot be Hounsfield units for a CT; voxel spacing far from the training data.
- **From what the model already produces:** the distance of the image features (the projector output
  the LLM reads, or the SigLIP image embedding for retrieval) to the training distribution: a
  Mahalanobis distance in a low-rank Gaussian fitted to the training features (principal components
  plus an isotropic residual), flagged above a threshold chosen when the statistics are built (a high
  quantile of held-out training distances).

The numbers live next to the weights: ``scope.json`` (modalities, spacing ranges, thresholds) and
``scope.safetensors`` (means and principal components). ``python -m training.scope`` writes them
(docs/training.md). A folder without them gets the generic model-free checks only.

Nothing here blocks generation: the docks and the CLI show the reasons and still run the model.
The profile and the checks live beside the model (the statistics are part of a model folder);
`napari_med3dvlm.inference.scope` runs them for the engine's current model.
"""

from .checks import (
    PADDING_HU,
    ScopeReason,
    ScopeResult,
    check_volume,
    feature_reason,
    intensity_reasons,
    volume_reasons,
)
from .profile import (
    DEFAULT_ADVICE,
    DEFAULT_MIN_SLICES,
    DEFAULT_MODALITIES,
    DEFAULT_SPACING_TOLERANCE,
    KINDS,
    SCOPE_FORMAT,
    SCOPE_JSON,
    SCOPE_TENSORS,
    ScopeProfile,
    profile_for,
    weight_files,
)
from .stats import FeatureStats, fit_feature_stats, fit_gaussian, siglip_feature, vlm_feature

__all__ = [
    "DEFAULT_ADVICE", "DEFAULT_MIN_SLICES", "DEFAULT_MODALITIES", "DEFAULT_SPACING_TOLERANCE", "KINDS",
    "PADDING_HU", "SCOPE_FORMAT", "SCOPE_JSON", "SCOPE_TENSORS", "FeatureStats", "ScopeProfile", "ScopeReason",
    "ScopeResult", "check_volume", "feature_reason", "fit_feature_stats", "fit_gaussian", "intensity_reasons",
    "profile_for", "siglip_feature", "vlm_feature", "volume_reasons", "weight_files",
]
