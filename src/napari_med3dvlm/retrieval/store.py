"""The on-disk index: one LanceDB table of volume embeddings plus a small JSON file of roots.

Crash safety comes from LanceDB itself: every ``add``/``merge_insert``/``delete`` is one atomic
commit of a new table version, so a process killed at any moment leaves the last committed version
intact. Rows are upserted by key, so a batch that is written twice (resume after a crash between
commit and bookkeeping) still leaves one row per volume.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

TABLE = "volumes"
INFO_FILE = "med3dvlm_index.json"
FORMAT_VERSION = 1
#: Below this many rows a brute-force scan in numpy is exact and as fast as an ANN index
#: (benchmarks/retrieval.py; docs/retrieval.md has the measurement).
ANN_THRESHOLD = 50_000


def index_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string()),  # "<root id>/<path relative to the root>[#series]"
            pa.field("root_id", pa.int32()),
            pa.field("path", pa.string()),  # relative to the root, posix
            pa.field("series", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("description", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("shape", pa.list_(pa.int32(), 3)),
            pa.field("spacing", pa.list_(pa.float32(), 3)),
            pa.field("thumbnail", pa.binary()),
            pa.field("model_id", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


@dataclass(frozen=True)
class SearchHit:
    """One result: where the volume is, how well it matched, and what to show for it."""

    score: float  # cosine similarity in [-1, 1]
    key: str
    path: Path  # absolute path a reader can open (a NIfTI file or a DICOM folder)
    relative_path: str
    description: str
    modality: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    thumbnail: bytes


class VolumeIndex:
    """A persistent index of volume embeddings in a folder the user chooses."""

    def __init__(self, path: str | os.PathLike, *, ann_threshold: int = ANN_THRESHOLD):
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.ann_threshold = ann_threshold
        self._db = lancedb.connect(str(self.path))
        self._info = self._read_info()
        self._matrix_cache = None  # (table version, keys, matrix) for exact search
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------------------------
    def _read_info(self) -> dict:
        file = self.path / INFO_FILE
        if file.exists():
            info = json.loads(file.read_text(encoding="utf-8"))
            if info.get("format", 0) > FORMAT_VERSION:
                raise ValueError(f"index at {self.path} was written by a newer napari-med3dvlm")
            return info
        return {"format": FORMAT_VERSION, "model_id": None, "dim": None, "roots": {}}

    def _write_info(self) -> None:
        file = self.path / INFO_FILE
        tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._info, indent=2), encoding="utf-8")
        os.replace(tmp, file)  # atomic: a reader sees the old or the new file, never half of one

    @property
    def model_id(self) -> str | None:
        return self._info.get("model_id")

    @property
    def dim(self) -> int | None:
        return self._info.get("dim")

    @property
    def roots(self) -> dict[int, Path]:
        return {int(k): Path(v) for k, v in self._info["roots"].items()}

    def root_id(self, root: str | os.PathLike, create: bool = True) -> int:
        """The id a root folder is stored under (added on first use)."""
        root = str(Path(root).expanduser().resolve())
        for key, value in self._info["roots"].items():
            if value == root:
                return int(key)
        if not create:
            raise KeyError(f"{root} is not in this index")
        new_id = max((int(k) for k in self._info["roots"]), default=-1) + 1
        self._info["roots"][str(new_id)] = root
        self._write_info()
        return new_id

    def set_model(self, model_id: str, dim: int) -> None:
        """Bind the index to a model; switching models drops the vectors of the old one.

        Vectors of two models live in different spaces, so a search must never rank them together.
        """
        if self.model_id == model_id and self.dim == dim:
            return
        if TABLE in self._tables():
            self._db.drop_table(TABLE)
        self._matrix_cache = None
        self._info.update(model_id=model_id, dim=int(dim))
        self._write_info()

    def _tables(self) -> list[str]:
        names = self._db.list_tables()
        return list(getattr(names, "tables", names))

    def table(self, create: bool = False):
        if TABLE in self._tables():
            return self._db.open_table(TABLE)
        if not create:
            return None
        if self.dim is None:
            raise RuntimeError("set_model() before writing to a new index")
        return self._db.create_table(TABLE, schema=index_schema(self.dim), exist_ok=True)

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        table = self.table()
        return 0 if table is None else table.count_rows()

    def entries(self, root_id: int | None = None, columns=("key", "content_hash", "model_id")) -> dict[str, dict]:
        """Stored rows (without vectors) by key, optionally only those of one root."""
        table = self.table()
        if table is None:
            return {}
        query = table.search().select(list(columns)).limit(None)
        if root_id is not None:
            query = query.where(f"root_id = {int(root_id)}")
        rows = query.to_arrow().to_pylist()
        return {row["key"]: row for row in rows}

    # -- writing -------------------------------------------------------------------------------
    def upsert(self, rows: list[dict]) -> None:
        """Insert or replace rows by key, in one atomic commit."""
        if not rows:
            return
        table = self.table(create=True)
        data = pa.Table.from_pylist(rows, schema=index_schema(self.dim))
        table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def delete_keys(self, keys) -> int:
        keys = list(keys)
        table = self.table()
        if table is None or not keys:
            return 0
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in chunk)
            table.delete(f"key IN ({quoted})")
        return len(keys)

    def deduplicate(self) -> int:
        """Drop repeated keys (keeps one); a safety net for indexes written by interrupted tools."""
        table = self.table()
        if table is None:
            return 0
        keys = table.search().select(["key"]).limit(None).to_arrow()["key"].to_pylist()
        seen, repeated = set(), set()
        for key in keys:
            (repeated if key in seen else seen).add(key)
        if not repeated:
            return 0
        full = table.search().where(
            "key IN (" + ", ".join("'" + k.replace("'", "''") + "'" for k in repeated) + ")"
        ).limit(None).to_arrow()
        keep = {}
        for row in full.to_pylist():
            keep[row["key"]] = row
        self.delete_keys(repeated)
        self.upsert(list(keep.values()))
        return len(keys) - len(seen)

    def maintain(self) -> None:
        """Compact small commits and build or refresh the ANN index once the table is large."""
        table = self.table()
        if table is None:
            return
        rows = table.count_rows()
        has_index = bool(table.list_indices())
        if rows >= self.ann_threshold and not has_index:
            self.build_ann_index()
        table.optimize()  # merges small fragments and folds new rows into an existing vector index

    def build_ann_index(self, index_type: str = "IVF_PQ") -> None:
        table = self.table()
        rows = table.count_rows()
        dim = self.dim
        table.create_index(
            metric="cosine",
            index_type=index_type,
            num_partitions=max(1, int(np.sqrt(rows))),
            num_sub_vectors=_sub_vectors(dim),
            replace=True,
        )

    # -- searching -----------------------------------------------------------------------------
    def _matrix(self, table):
        version = table.version
        cached = self._matrix_cache
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        data = table.search().select(["key", "vector"]).limit(None).to_arrow()
        keys = np.asarray(data["key"].to_pylist(), dtype=object)
        vectors = data["vector"].combine_chunks()
        matrix = np.asarray(vectors.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, self.dim)
        self._matrix_cache = (version, keys, matrix)
        return keys, matrix

    def search(self, query: np.ndarray, k: int = 10, exact: bool | None = None, nprobes: int = 32,
               refine_factor: int = 4) -> list[SearchHit]:
        """Top-k volumes by cosine similarity to a unit query vector.

        Exact (numpy) below ``ann_threshold`` rows or without an ANN index; the LanceDB vector
        index above it (with re-ranking of ``refine_factor`` x k candidates on full vectors).
        """
        table = self.table()
        if table is None or k <= 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if self.dim is not None and query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions; this index stores {self.dim}")
        if exact is None:
            exact = table.count_rows() < self.ann_threshold or not table.list_indices()
        if exact:
            with self._lock:
                keys, matrix = self._matrix(table)
            if not len(keys):
                return []
            scores = matrix @ query
            k = min(k, len(keys))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top])]
            return self._hits([keys[i] for i in top], [float(scores[i]) for i in top])
        result = (
            table.search(query)
            .distance_type("cosine")
            .nprobes(nprobes)
            .refine_factor(refine_factor)
            .limit(k)
            .select(["key"])
            .to_arrow()
        )
        keys = result["key"].to_pylist()
        scores = [1.0 - float(d) for d in result["_distance"].to_pylist()]
        return self._hits(keys, scores)

    def _hits(self, keys: list[str], scores: list[float]) -> list[SearchHit]:
        if not keys:
            return []
        table = self.table()
        quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        columns = ["key", "root_id", "path", "description", "modality", "shape", "spacing", "thumbnail"]
        rows = table.search().where(f"key IN ({quoted})").select(columns).limit(len(keys)).to_arrow().to_pylist()
        by_key = {row["key"]: row for row in rows}
        roots = self.roots
        hits = []
        for key, score in zip(keys, scores):
            row = by_key.get(key)
            if row is None:
                continue
            root = roots.get(row["root_id"], Path("."))
            hits.append(
                SearchHit(
                    score=score,
                    key=key,
                    path=root / row["path"],
                    relative_path=row["path"],
                    description=row["description"],
                    modality=row["modality"],
                    shape=tuple(row["shape"]),
                    spacing=tuple(row["spacing"]),
                    thumbnail=row["thumbnail"],
                )
            )
        return hits


def _sub_vectors(dim: int) -> int:
    """PQ sub-vectors: about 8 dimensions each, dividing dim (LanceDB needs an exact divisor)."""
    for size in (8, 16, 4, 32, 2, 1):
        if dim % size == 0:
            return dim // size
    return 1
