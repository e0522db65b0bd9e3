"""Image-text retrieval recall, as the reference's ``eval_clip.py`` computes it.

``S = image_embeddings @ text_embeddingsᵀ`` over the first N test pairs; row i's match is column
i. ``IR`` (image -> text) ranks the texts for each image, ``TR`` (text -> image) ranks the
images for each text.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)
DEFAULT_SIZES = (100, 500, 1000, 2000)


def recall_at_k(similarity, ks=DEFAULT_KS) -> dict[int, float]:
    """Fraction of rows whose own column (the diagonal) is among the k highest scores.

    Ties count against the query (a constant similarity matrix scores k/N, not 1): the rank is
    the number of other candidates scoring strictly higher, plus the ties before it.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"need a square similarity matrix, got shape {s.shape}")
    n = s.shape[0]
    own = np.diag(s)[:, None]
    higher = (s > own).sum(axis=1)
    ties_before = np.array([(s[i, :i] == s[i, i]).sum() for i in range(n)])
    rank = higher + ties_before  # 0 = first
    return {int(k): float((rank < k).mean()) for k in ks}


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def retrieval_metrics(image_embeddings, text_embeddings, sizes=DEFAULT_SIZES, ks=DEFAULT_KS,
                      normalise: bool = True) -> dict[str, dict[str, float]]:
    """``{"N=100": {"IR@1": .., "IR@5": .., "TR@1": .., ...}, ...}`` for each N (all pairs when
    fewer than N). Embeddings are L2-normalised first, so S holds cosine similarities."""
    img = _normalise(image_embeddings) if normalise else np.asarray(image_embeddings, dtype=np.float64)
    txt = _normalise(text_embeddings) if normalise else np.asarray(text_embeddings, dtype=np.float64)
    if img.shape[0] != txt.shape[0]:
        raise ValueError(f"{img.shape[0]} images but {txt.shape[0]} texts")
    total = img.shape[0]
    out: dict[str, dict[str, float]] = {}
    for size in sorted({min(int(n), total) for n in sizes}):
        s = img[:size] @ txt[:size].T
        row = {f"IR@{k}": v for k, v in recall_at_k(s, ks).items()}
        row.update({f"TR@{k}": v for k, v in recall_at_k(s.T, ks).items()})
        out[f"N={size}"] = row
    return out
