"""Retrieval speed on this machine: query latency over a large index and indexing throughput.

    python benchmarks/retrieval.py                      # 100,000 x 768-d embeddings, 200 queries
    python benchmarks/retrieval.py --n 20000 --dim 256  # smaller / the demo model's width
    python benchmarks/retrieval.py --skip-indexing      # latency only

Prints ratios against baselines measured in the same run:
- query latency (p50, p95) of ``VolumeIndex.search`` (exact numpy path and LanceDB ANN path) against
  a bare brute-force numpy scan of the same vectors, with recall of the planted target;
- the exact-scan latency over growing table sizes, which sets ``store.ANN_MIN_FLOATS``;
- indexing throughput in volumes/s with a SigLIP encoder (a fresh one, nano DCFormer at 64x128x128
  by default, ``--vision-variant small --input-size 128 256 256`` for the published size; or
  ``--model``), and re-index throughput of an unchanged folder (hashing only).

Embeddings are synthetic but clustered like a real collection (many series per anatomy/finding):
uniform random vectors in 768-d have no meaningful neighbours and make every ANN look broken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from napari_med3dvlm.retrieval.store import VolumeIndex, index_schema


def clustered_embeddings(n: int, dim: int, rng, per_cluster: int = 50, spread: float = 0.6) -> np.ndarray:
    centres = rng.standard_normal((max(1, n // per_cluster), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    vectors = centres[labels] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill_index(index: VolumeIndex, vectors: np.ndarray, chunk: int = 20_000) -> float:
    """Bulk-load rows shaped like real ones (a ~3 KB thumbnail each); returns seconds."""
    n, dim = vectors.shape
    index.set_model("benchmark", dim)
    thumb = bytes(3000)
    start = time.perf_counter()
    for first in range(0, n, chunk):
        ids = range(first, min(n, first + chunk))
        m = len(ids)
        schema = index_schema(dim)
        columns = {
                "key": [f"0/case_{i:06d}.nii.gz" for i in ids],
                "root_id": pa.array([0] * m, pa.int32()),
                "path": [f"case_{i:06d}.nii.gz" for i in ids],
                "series": [""] * m,
                "content_hash": ["0" * 32] * m,
                "description": ["synthetic"] * m,
                "modality": ["CT"] * m,
                "shape": pa.array([[64, 128, 128]] * m, pa.list_(pa.int32(), 3)),
                "spacing": pa.array([[2.0, 1.0, 1.0]] * m, pa.list_(pa.float32(), 3)),
                "thumbnail": [thumb] * m,
                "model_id": ["benchmark"] * m,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[first : first + m].ravel()), dim),
        }
        for field in schema:  # columns the schema gained since (e.g. scope): empty, as for in-scope rows
            if field.name not in columns:
                columns[field.name] = pa.array([""] * m, field.type) if pa.types.is_string(field.type) else pa.nulls(m, field.type)
        table = pa.table(columns, schema=schema)
        index.table(create=True).add(table)
    return time.perf_counter() - start


def percentiles(samples) -> tuple[float, float]:
    ms = np.asarray(samples) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def time_queries(fn, queries) -> tuple[list[float], list]:
    fn(queries[0])  # warm caches (matrix load, index open)
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - start)
    return times, results


def numpy_topk(matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ q
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def latency(args, workdir: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = clustered_embeddings(args.n, args.dim, rng)
    targets = rng.integers(0, args.n, args.queries)
    queries = vectors[targets] + rng.standard_normal((args.queries, args.dim)).astype(np.float32) * (0.3 / np.sqrt(args.dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = 10

    print(f"== query latency: {args.n:,} embeddings x {args.dim}-d, {args.queries} queries, top-{k}")
    base_times, base_top = time_queries(lambda q: numpy_topk(vectors, q, k), queries)
    b50, b95 = percentiles(base_times)
    print(f"baseline numpy brute force      p50 {b50:7.2f} ms  p95 {b95:7.2f} ms")

    index = VolumeIndex(workdir / "latency.db", ann_threshold=args.n)
    seconds = fill_index(index, vectors)
    print(f"(bulk load {seconds:.1f} s)")

    def key_to_id(hit):
        return int(hit.key.rsplit("_", 1)[1].split(".")[0])

    exact_times, exact_hits = time_queries(lambda q: index.search(q, k, exact=True), queries)
    e50, e95 = percentiles(exact_times)
    exact_ok = np.mean([[key_to_id(h) for h in hits] == list(top) for hits, top in zip(exact_hits, base_top)])
    print(f"index exact (+ row fetch)       p50 {e50:7.2f} ms  p95 {e95:7.2f} ms  "
          f"x{e95 / b95:.2f} of baseline p95; same top-{k} as baseline: {exact_ok:.0%}")

    start = time.perf_counter()
    index.build_ann_index(args.index_type)
    build = time.perf_counter() - start
    for nprobes, refine in ((10, 3), (20, 5), (20, 2)):  # the last: VolumeIndex.search's default
        ann_times, ann_hits = time_queries(
            lambda q: index.search(q, k, exact=False, nprobes=nprobes, refine_factor=refine), queries
        )
        a50, a95 = percentiles(ann_times)
        recall1 = np.mean([bool(h) and key_to_id(h[0]) == t for h, t in zip(ann_hits, targets)])
        overlap = np.mean([len({key_to_id(x) for x in h} & set(top)) / k for h, top in zip(ann_hits, base_top)])
        print(f"index ANN {args.index_type} nprobes {nprobes:>2} refine {refine}  p50 {a50:7.2f} ms  p95 {a95:7.2f} ms  "
              f"x{a95 / b95:.2f} of baseline p95; target@1 {recall1:.1%}; top-{k} overlap with exact {overlap:.1%}"
              + ("  (default)" if (nprobes, refine) == (20, 2) else ""))
    print(f"(ANN index build {build:.1f} s; target p95 <= 20 ms at the default: {'met' if a95 <= 20 else 'NOT met'})")

    print("== exact scan vs table size (sets ANN_MIN_FLOATS)")
    for n in (1_000, 5_000, 10_000, 25_000, 50_000, 100_000):
        if n > args.n:
            break
        times, _ = time_queries(lambda q: numpy_topk(vectors[:n], q, k), queries[:50])
        p50, p95 = percentiles(times)
        print(f"  n={n:>7,}  exact p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  ({n * args.dim / 1e6:.1f} M floats scanned)")


def throughput(args, workdir: Path) -> None:
    import torch

    from napari_med3dvlm.retrieval import SigLIPEmbedder, index_folder
    from napari_med3dvlm.retrieval.embedder import get_embedder

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "retrieval"))
    from retrieval_toys import phantom, write_nifti

    if args.model:
        embedder = get_embedder(args.model, "cpu")
    else:
        from transformers import BertConfig, BertTokenizerFast

        from napari_med3dvlm.model import SigLIPModel
        from napari_med3dvlm.model.siglip import SigLIPConfig

        text = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
        config = SigLIPConfig(vision_variant=args.vision_variant, hidden_size=256, text_config=text.to_dict())
        vocab = workdir / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]))
        tokenizer = BertTokenizerFast(vocab_file=str(vocab))
        embedder = SigLIPEmbedder(
            SigLIPModel(config), tokenizer, f"{args.vision_variant}-siglip", spatial_size=tuple(args.input_size)
        )

    root = workdir / "volumes"
    for i in range(args.volumes):
        write_nifti(root / f"case_{i:03d}.nii.gz", phantom(i, shape=(64, 160, 160)))
    print(f"== indexing throughput: {args.volumes} NIfTI volumes 64x160x160, model input {embedder.spatial_size}, "
          f"torch threads {torch.get_num_threads()}")
    db = workdir / "throughput.db"
    report = index_folder(db, root, embedder, batch_size=4)
    print(f"first index    {report.embedded / report.seconds:6.2f} volumes/s ({report.seconds:.1f} s)")
    again = index_folder(db, root, embedder, batch_size=4)
    print(f"re-index same  {again.total / again.seconds:6.1f} volumes/s (x{report.seconds / again.seconds:.0f} faster: "
          f"{again.embedded} embedded, hashing only)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="stored embeddings")
    parser.add_argument("--dim", type=int, default=768, help="embedding width (published SigLIP: 768)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index-type", default="IVF_HNSW_SQ", choices=("IVF_HNSW_SQ", "IVF_PQ", "IVF_FLAT"))
    parser.add_argument("--volumes", type=int, default=16, help="volumes for the throughput run")
    parser.add_argument("--model", help="model source for the throughput run (default: a fresh SigLIP, below)")
    parser.add_argument("--vision-variant", default="nano", help="DCFormer variant of the fresh SigLIP")
    parser.add_argument("--input-size", type=int, nargs=3, default=(64, 128, 128), metavar=("D", "H", "W"))
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-indexing", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_latency:
            latency(args, Path(tmp))
        if not args.skip_indexing:
            throughput(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
