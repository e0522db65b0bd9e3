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
SHARD_PREFIX = "shard_"
#: Rows from which the key column gets a B-tree index (upserts join on it).
KEY_INDEX_ROWS = 10_000
INFO_FILE = "med3dvlm_index.json"
FORMAT_VERSION = 1
#: An exact numpy scan costs about 0.4 ms per million float32 values on 2 CPU cores; the HNSW index
#: answers in ~5-10 ms at any size. So the index switches to ANN once a scan reads more than this
#: many floats (26k rows at 768-d, 78k at 256-d). Measured by benchmarks/retrieval.py, see
#: docs/retrieval.md.
ANN_MIN_FLOATS = 20_000_000


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
            # Why the volume is outside what the model knows, one reason a line ("" in scope, null
            # when not checked: rows of an index written before the check existed).
            pa.field("scope", pa.string()),
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
    scope: tuple[str, ...] = ()  # reasons the volume is outside what the model knows (empty: in scope)


class VolumeIndex:
    """A persistent index of volume embeddings in a folder the user chooses."""

    def __init__(self, path: str | os.PathLike, *, ann_threshold: int | None = None):
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self._ann_threshold = ann_threshold
        self._db = lancedb.connect(str(self.path))
        self._read_info()  # fail early on an index from a newer version
        self._matrix_cache = None  # (table version, keys, matrix) for exact search
        self._ann_cache = None  # (table version, whether searches use the vector index)
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------------------------
    # The JSON file is re-read on every use: the dock, a CLI run and other processes may share one
    # index, and a cached copy written back would drop their roots.
    @property
    def _info(self) -> dict:
        return self._read_info()

    def _read_info(self) -> dict:
        file = self.path / INFO_FILE
        if file.exists():
            info = json.loads(file.read_text(encoding="utf-8"))
            if info.get("format", 0) > FORMAT_VERSION:
                raise ValueError(f"index at {self.path} was written by a newer napari-med3dvlm")
            return info
        return {"format": FORMAT_VERSION, "model_id": None, "dim": None, "roots": {}}

    def _write_info(self, info: dict) -> None:
        file = self.path / INFO_FILE
        tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.replace(tmp, file)  # atomic: a reader sees the old or the new file, never half of one

    @property
    def ann_threshold(self) -> int:
        """Rows from which searches use the vector index (see ``ANN_MIN_FLOATS``)."""
        if self._ann_threshold is not None:
            return self._ann_threshold
        return max(10_000, ANN_MIN_FLOATS // (self.dim or 768))

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
        info = self._read_info()
        for key, value in info["roots"].items():
            if value == root:
                return int(key)
        if not create:
            raise KeyError(f"{root} is not in this index")
        new_id = max((int(k) for k in info["roots"]), default=-1) + 1
        info["roots"][str(new_id)] = root
        self._write_info(info)
        return new_id

    def set_model(self, model_id: str, dim: int) -> None:
        """Bind the index to a model; switching models drops the vectors of the old one.

        Vectors of two models live in different spaces, so a search must never rank them together.
        """
        if self.model_id == model_id and self.dim == dim:
            return
        if TABLE in self._tables():
            self._db.drop_table(TABLE)
        self._matrix_cache = self._ann_cache = None
        info = self._read_info()
        info.update(model_id=model_id, dim=int(dim))
        self._write_info(info)

    def _tables(self) -> list[str]:
        names = self._db.list_tables()
        return list(getattr(names, "tables", names))

    def table(self, create: bool = False, name: str = TABLE):
        if name in self._tables():
            return _with_scope_column(self._db.open_table(name))
        if not create:
            return None
        if self.dim is None:
            raise RuntimeError("set_model() before writing to a new index")
        return self._db.create_table(name, schema=index_schema(self.dim), exist_ok=True)

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
    def upsert(self, rows, table_name: str = TABLE) -> None:
        """Insert or replace rows (dicts or an Arrow table) by key, in one atomic commit."""
        if not len(rows):
            return
        table = self.table(create=True, name=table_name)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=index_schema(self.dim))
        table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)

    # -- shards of a multi-process run ------------------------------------------------------------
    def shard_tables(self) -> list[str]:
        return sorted(name for name in self._tables() if name.startswith(SHARD_PREFIX))

    def merge_shards(self, chunk: int = 2_000) -> int:
        """Fold per-process shard tables into the index, then drop them.

        Upserts are idempotent, so a merge that is killed half-way is simply repeated next time.
        """
        merged = 0
        for name in self.shard_tables():
            data = self._db.open_table(name).to_arrow()
            for start in range(0, data.num_rows, chunk):
                self.upsert(data.slice(start, chunk).cast(index_schema(self.dim)))
            merged += data.num_rows
            self._db.drop_table(name)
        return merged

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
        has_index = bool(_vector_indices(table))
        if rows >= self.ann_threshold and not has_index:
            self.build_ann_index()
        if rows >= KEY_INDEX_ROWS and not any("key" in list(i.columns) for i in table.list_indices()):
            from lancedb.index import BTree

            table.create_index("key", config=BTree())  # keeps per-batch upserts and hit lookups fast
        table.optimize()  # merges small fragments and folds new rows into an existing vector index

    def build_ann_index(self, index_type: str = "IVF_HNSW_SQ") -> None:
        """Build the LanceDB vector index (cosine).

        IVF_HNSW_SQ is the default: on 100k x 768-d it builds ~5x faster than IVF_PQ on 2 cores and
        keeps int8 vectors, so recall is close to exact (benchmarks/retrieval.py).
        """
        table = self.table()
        rows = table.count_rows()
        if index_type == "IVF_PQ":
            options = {"num_partitions": max(1, int(np.sqrt(rows))), "num_sub_vectors": _sub_vectors(self.dim)}
        else:
            options = {"num_partitions": max(1, rows // 1500)}
        table.create_index(metric="cosine", index_type=index_type, replace=True, **options)
        self._ann_cache = None

    # -- searching -----------------------------------------------------------------------------
    def _matrix(self, table):
        """All vectors as one float32 matrix plus their row ids, cached per table version."""
        version = table.version
        cached = self._matrix_cache
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        data = table.search().select(["vector"]).with_row_id(True).limit(None).to_arrow()
        row_ids = data["_rowid"].to_numpy()
        vectors = data["vector"].combine_chunks()
        matrix = np.asarray(vectors.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, self.dim)
        self._matrix_cache = (version, row_ids, matrix)
        return row_ids, matrix

    def uses_ann(self, table=None) -> bool:
        """Whether searches go through the vector index (large tables that have one); cached per
        table version (a write or a new index makes a new version)."""
        table = table or self.table()
        if table is None:
            return False
        version = table.version
        cached = self._ann_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        answer = table.count_rows() >= self.ann_threshold and bool(_vector_indices(table))
        self._ann_cache = (version, answer)
        return answer

    def search(self, query: np.ndarray, k: int = 10, exact: bool | None = None, nprobes: int = 20,
               refine_factor: int = 2) -> list[SearchHit]:
        """Top-k volumes by cosine similarity to a unit query vector.

        Exact (a numpy scan of the cached matrix) below ``ann_threshold`` rows; the LanceDB vector
        index above it, re-ranking ``refine_factor`` x k candidates on the full vectors.
        """
        table = self.table()
        if table is None or k <= 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        dim = self.dim
        if dim is not None and query.shape[0] != dim:
            raise ValueError(f"query has {query.shape[0]} dimensions; this index stores {dim}")
        if exact is None:
            exact = not self.uses_ann(table)
        if exact:
            with self._lock:
                row_ids, matrix = self._matrix(table)
            if not len(row_ids):
                return []
            scores = matrix @ query
            k = min(k, len(row_ids))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top])]
            rows = table.take_row_ids([int(row_ids[i]) for i in top]).select(_HIT_COLUMNS).with_row_id()
            by_id = {row["_rowid"]: row for row in rows.to_arrow().to_pylist()}
            roots = self.roots
            return [
                self._hit(by_id[int(row_ids[i])], float(scores[i]), roots) for i in top if int(row_ids[i]) in by_id
            ]
        result = (
            table.search(query)
            .distance_type("cosine")
            .nprobes(nprobes)
            .refine_factor(refine_factor)
            .limit(k)
            .select([*_HIT_COLUMNS, "_distance"])
            .to_arrow()
        )
        roots = self.roots
        return [self._hit(row, 1.0 - float(row["_distance"]), roots) for row in result.to_pylist()]

    @staticmethod
    def _hit(row: dict, score: float, roots: dict[int, Path]) -> SearchHit:
        root = roots.get(row["root_id"], Path("."))
        return SearchHit(
            score=score,
            key=row["key"],
            path=root / row["path"],
            relative_path=row["path"],
            description=row["description"],
            modality=row["modality"],
            shape=tuple(row["shape"]),
            spacing=tuple(row["spacing"]),
            thumbnail=row["thumbnail"],
            scope=tuple(line for line in (row.get("scope") or "").split("\n") if line),
        )


_HIT_COLUMNS = ["key", "root_id", "path", "description", "modality", "shape", "spacing", "thumbnail", "scope"]


def _with_scope_column(table):
    """Tables written before the scope check get its column (null: not checked) on first open."""
    if "scope" not in table.schema.names:
        table.add_columns({"scope": "CAST(NULL AS STRING)"})
    return table


def _vector_indices(table) -> list:
    return [i for i in table.list_indices() if "vector" in list(getattr(i, "columns", []) or [])]


def _sub_vectors(dim: int) -> int:
    """PQ sub-vectors: about 8 dimensions each, dividing dim (LanceDB needs an exact divisor)."""
    for size in (8, 16, 4, 32, 2, 1):
        if dim % size == 0:
            return dim // size
    return 1
