"""The one entry point for a VLM: a model source (the packaged demo, a folder or a hub id) in, the
model and its tokenizer out. The folder's ``config.json`` says which layout it holds, and the loader
of that layout reads it: the published layout (`loading`) or the embedded own-weights layout
(`embedded`, which builds on `loading`). Nothing below imports this module, so the two layouts never
import each other in a circle.
"""

from __future__ import annotations

from .configuration import PUBLISHED_MODEL_TYPES
from .embedded import load_embedded
from .files import ModelLoadError
from .loading import load_published, read_config, resolve_source


def load_vlm(source=None, device="cpu", dtype=None, allow_pickle: bool = False):
    """(model, tokenizer) for a published folder, an embedded-format folder, a hub id or the demo.

    ``source`` None / ``"embedded"`` loads the packaged demo model. The folder format is detected
    from its ``config.json``: ``base_language_model`` means the embedded own-weights format.
    """
    folder = resolve_source(source)
    config = read_config(folder)
    if config.get("base_language_model"):
        return load_embedded(folder, device=device, dtype=dtype)
    if config.get("model_type") in PUBLISHED_MODEL_TYPES:
        return load_published(folder, device=device, dtype=dtype, allow_pickle=allow_pickle)
    raise ModelLoadError(
        folder / "config.json",
        f"model_type {config.get('model_type')!r} is not a Med3DVLM model",
        f"choose a folder whose config.json has model_type {' / '.join(sorted(PUBLISHED_MODEL_TYPES))}, or an "
        "embedded-format folder",
    )
