"""Tiny planted retrieval data shared by the retrieval tests and the CUDA tests (no faiss needed here)."""

import numpy as np
import polars as pl

from thinkrec.data.dataset import Dataset
from thinkrec.tokenize.sids import SIDMap


def planted_dataset(n_items: int = 30, n_users: int = 200, seed: int = 0) -> Dataset:
    """Every user walks a fixed successor permutation (next item = succ[current]) for 4–13 steps."""
    rng = np.random.default_rng(seed)
    succ = rng.permutation(n_items)
    users, items = [], []
    for u in range(n_users):
        cur = int(rng.integers(n_items))
        for _ in range(int(rng.integers(4, 14))):
            users.append(u)
            items.append(cur)
            cur = int(succ[cur])
    inter = pl.DataFrame({"user_id": users, "item_id": items, "ts": list(range(len(users)))})
    return Dataset.from_frames("planted", inter)


def random_sids(ds: Dataset, k: int = 4, seed: int = 1) -> tuple[SIDMap, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, k, size=(ds.n_items, 2))
    return SIDMap(raw, codebook_size=k), [rng.normal(size=(k, 6)).astype(np.float32) for _ in range(2)]
