"""Where a model comes from, and the one answer to every question about that: the packaged demo
("embedded"), a local folder or a Hugging Face Hub id; whether this session may download; where a
folder keeps its SigLIP encoder; the input size it is given; the name shown for it in exports, titles
and the retrieval index (never a full local path); and the fingerprint of its files.

Light on purpose (no torch, no transformers): the docks ask it while nothing is loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

#: The model packaged with the plugin (the settings' default model source).
EMBEDDED = "embedded"
#: Every spelling of a source that means the packaged demo model (settings, ``--model``, the API).
EMBEDDED_SOURCES = (None, "", EMBEDDED, "demo")
#: The packaged demo model's folder.
DEMO_FOLDER = Path(__file__).resolve().parent.parent / "assets" / "demo"
#: Where an embedded-layout VLM folder keeps its SigLIP dual encoder (the packaged demo does).
SIGLIP_SUBFOLDER = "siglip"
#: ``owner/name``: a Hugging Face Hub repository id (a local folder of that name wins).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Either variable set to a true value turns downloads off (the libraries read the same two).
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def is_embedded(source) -> bool:
    """Whether ``source`` names the packaged demo model."""
    return source in EMBEDDED_SOURCES


def is_hub_id(source) -> bool:
    """Whether ``source`` has the form of a hub id (``owner/name``; not a path like ``./a/b``)."""
    return bool(HUB_ID.match(str(source)))


def offline(default: bool = False) -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value.
    ``default`` is the answer when neither is set (``training.run`` runs offline unless told)."""
    values = [os.environ.get(name, "").strip().lower() for name in OFFLINE_VARIABLES]
    if not any(values):
        return default
    return any(value in _TRUE for value in values)


def source_kind(source) -> str:
    """``"embedded"``, ``"folder"`` or ``"hub"`` (a ``owner/name`` id that is not a local folder)."""
    if is_embedded(source):
        return "embedded"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if is_hub_id(source):
        return "hub"
    return "folder"


def display_model_id(source) -> str:
    """A model name for exports and titles: never a full local path (it may name a user)."""
    kind = source_kind(source)
    if kind == "folder":
        return "local:" + Path(source).expanduser().name
    if kind == "embedded":
        return EMBEDDED
    return source


def input_size(source: str) -> tuple[int, int, int]:
    """(D, H, W) the VLM of ``source`` is given, from its ``config.json`` alone: no weights are read
    and, for a hub id, only that one file is fetched. Raises when the config cannot be found. A config
    without ``image_size`` is the published model's (`io.PUBLISHED_INPUT_SIZE`)."""
    import json

    from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE

    kind = source_kind(source)
    if kind == "hub":
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(str(source), "config.json"))
    else:
        config_path = (DEMO_FOLDER if kind == "embedded" else Path(source).expanduser()) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    size = config.get("image_size") or PUBLISHED_INPUT_SIZE
    return tuple(int(s) for s in size)


# -- the fingerprint of a model's files ----------------------------------------------------------
_CHUNK = 1 << 22
_digests: dict[tuple[str, int, int, int], str] = {}
_digests_lock = threading.Lock()


#: Files at least this large have their digest kept on disk too (the user cache's ``digests.json``), so
#: a process start does not hash gigabytes of weights again: once per file version and machine.
PERSIST_DIGESTS_FROM = 64 << 20


def file_digest(path) -> str:
    """sha256 of a file's bytes, read in chunks. Remembered per (path, size, modification and change
    times), in this process and, for large files, on disk: the times only say when to hash again, they
    are never part of the answer (the change time also moves when a rewrite restores the old
    modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    persist = stat.st_size >= PERSIST_DIGESTS_FROM
    with _digests_lock:
        known = _digests.get(key) or (_stored_digests().get("|".join(map(str, key))) if persist else None)
        if known is not None:
            _digests[key] = known
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _digests_lock:
        _digests[key] = value
        if persist:
            _store_digest("|".join(map(str, key)), value)
    return value


def _digests_file() -> Path:
    from .bases import cache_dir

    return cache_dir() / "digests.json"


def _stored_digests() -> dict:
    import json

    try:
        return json.loads(_digests_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: hash again


def _store_digest(key: str, value: str) -> None:
    """Add one digest to ``digests.json`` (atomic replace; a lost race only costs a hash later)."""
    import json
    import tempfile

    target = _digests_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stored = {**_stored_digests(), key: value}
        handle, temporary = tempfile.mkstemp(prefix=".digests-", dir=target.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(stored, out)
        os.replace(temporary, target)
    except OSError:
        pass  # a cache that cannot be written only costs the next process a hash


def content_fingerprint(files, root=None) -> str:
    """16 hex digits that change when any of ``files`` changes its bytes, size or name, and only then:
    a copy, a reinstall or a fresh checkout of the same weights (new modification times) keeps it.
    Names are relative to ``root`` when given (a subfolder's file differs from the top one), else
    the file names. The model id of the retrieval index, the scope statistics' weights and the
    language-model cache of vLLM are all this one fingerprint."""
    paths = sorted(Path(f) for f in files)
    digest = hashlib.sha256()
    for path in paths:
        name = path.relative_to(root).as_posix() if root is not None else path.name
        digest.update(f"{name}|{path.stat().st_size}|{file_digest(path)}\n".encode())
    return digest.hexdigest()[:16]
