"""S²GR semantic supervision targets: k-means clusters of each SID level's codewords, and their meaning.

Level l's codewords (from the quantizer) are clustered into ``K_c`` groups; g_l(s) is the cluster of code s.
A thinking token before level l is trained to point at the cluster of the code that follows, and at
inference its nearest cluster says which coarse region of the catalogue the model is heading to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import faiss
import numpy as np
import torch


def code_clusters(codebooks: Sequence[np.ndarray], radix: Sequence[int], n_clusters: int, seed: int = 0) -> torch.Tensor:
    """``[L, max(radix)]`` int64 cluster id of every code per SID level; −1 where a level has no codebook
    (e.g. the dedup digit) or beyond its radix. Levels with at most ``n_clusters`` codes keep one cluster
    per code."""
    out = torch.full((len(radix), max(radix)), -1, dtype=torch.int64)
    for lv, book in enumerate(codebooks[: len(radix)]):
        book = np.ascontiguousarray(book, dtype=np.float32)
        k = book.shape[0]
        if k != radix[lv]:
            raise ValueError(f"level {lv}: codebook has {k} codewords but the SID level has {radix[lv]} codes")
        if k <= n_clusters:
            out[lv, :k] = torch.arange(k)
            continue
        km = faiss.Kmeans(book.shape[1], n_clusters, niter=25, seed=seed, verbose=False, min_points_per_centroid=1)
        km.train(book)
        _, assign = km.index.search(book, 1)
        out[lv, :k] = torch.from_numpy(assign[:, 0].astype(np.int64))
    return out


def cluster_categories(
    code_clusters: torch.Tensor, item_codes: np.ndarray, item_categories: Sequence[str], top: int = 3
) -> dict[tuple[int, int], list[tuple[str, float]]]:
    """Dominant categories of each (level, cluster): the share of items whose level-l code falls in it."""
    clusters = code_clusters.cpu().numpy()
    out: dict[tuple[int, int], list[tuple[str, float]]] = {}
    for lv in range(item_codes.shape[1]):
        if (clusters[lv] < 0).all():
            continue
        item_cluster = clusters[lv][item_codes[:, lv]]
        for c in np.unique(item_cluster[item_cluster >= 0]):
            members = np.flatnonzero(item_cluster == c)
            counts = Counter(item_categories[i] or "(none)" for i in members)
            out[(lv, int(c))] = [(cat, n / len(members)) for cat, n in counts.most_common(top)]
    return out
