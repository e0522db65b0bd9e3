"""Text-to-image retrieval over a collection of volumes: a persistent LanceDB index of SigLIP
embeddings, refreshed incrementally, searched by text, report or volume.

No Qt here: the Retrieval dock and the ``index`` / ``search`` commands both call this package.
"""

from .embedder import Embedder, SigLIPEmbedder
from .indexer import IndexReport, index_folder, plan_index, refresh_index
from .search import search_text, search_volume
from .sources import VolumeSource, scan_folder
from .store import ANN_MIN_FLOATS, SearchHit, VolumeIndex

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
