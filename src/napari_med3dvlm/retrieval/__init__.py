"""Text-to-image retrieval over a collection of volumes: a persistent LanceDB index of SigLIP
embeddings, refreshed incrementally, searched by text, report or volume.

No Qt here: the Retrieval dock and the ``index`` / ``search`` commands both call this package.
"""

import importlib

#: public name -> submodule; imported on first use, so commands that never search (``report``) do
#: not pay for LanceDB at start-up.
_EXPORTS = {
    "Embedder": "embedder",
    "SigLIPEmbedder": "embedder",
    "IndexReport": "indexer",
    "index_folder": "indexer",
    "plan_index": "indexer",
    "refresh_index": "indexer",
    "search_text": "search",
    "search_volume": "search",
    "VolumeSource": "sources",
    "scan_folder": "sources",
    "ANN_MIN_FLOATS": "store",
    "SearchHit": "store",
    "VolumeIndex": "store",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ANN_MIN_FLOATS",
    "Embedder",
    "IndexReport",
    "SearchHit",
    "SigLIPEmbedder",
    "VolumeIndex",
    "VolumeSource",
    "index_folder",
    "plan_index",
    "refresh_index",
    "scan_folder",
    "search_text",
    "search_volume",
]
