"""Where a model comes from: the packaged demo ("embedded"), a local folder or a Hugging Face Hub id,
and the name shown for it in exports, titles and the retrieval index (never a full local path).

Light on purpose (no torch, no transformers): the docks ask it while nothing is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

#: The model packaged with the plugin.
EMBEDDED = "embedded"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def source_kind(source: str) -> str:
    """``"embedded"``, ``"folder"`` or ``"hub"`` (a ``owner/name`` id that is not a local folder)."""
    if source == EMBEDDED:
        return "embedded"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if _HUB_ID.match(source) and not source.startswith((".", "~", "/")):
        return "hub"
    return "folder"


def display_model_id(source: str) -> str:
    """A model name for exports and titles: never a full local path (it may name a user)."""
    kind = source_kind(source)
    if kind == "folder":
        return "local:" + Path(source).expanduser().name
    return source


#: (D, H, W) of a VLM config without ``image_size`` (the published model's input).
DEFAULT_INPUT_SIZE = (128, 256, 256)


def input_size(source: str) -> tuple[int, int, int]:
    """(D, H, W) the VLM of ``source`` is given, from its ``config.json`` alone: no weights are read
    and, for a hub id, only that one file is fetched. Raises when the config cannot be found."""
    import json

    if source_kind(source) == "hub":
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(str(source), "config.json"))
    else:
        from .loading import resolve_source

        config_path = Path(resolve_source(source)) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    size = config.get("image_size") or DEFAULT_INPUT_SIZE
    return tuple(int(s) for s in size)
