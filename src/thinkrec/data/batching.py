"""Padded, truncated history batches for sequence models.

Token convention for item-level models: token = item + 1, 0 = padding. Histories are left-padded so the
most recent item is always at the last position.
"""

from __future__ import annotations

import numpy as np


def pad_histories(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, max_len: int) -> np.ndarray:
    """Left-padded ``[len(rows), max_len]`` int64 array of the last ``max_len`` items of each CSR row, +1."""
    rows = np.asarray(rows, dtype=np.int64)
    ends = offsets[rows + 1]
    lengths = np.minimum(ends - offsets[rows], max_len)
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    # column j of row r holds items[end - (max_len - j)] when that index is inside the row
    cols = np.arange(max_len)
    src = ends[:, None] - (max_len - cols)[None, :]
    valid = cols[None, :] >= (max_len - lengths)[:, None]
    out[valid] = items[src[valid]] + 1
    return out


def shifted_pair(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets for causal training, both left-padded to ``max_len`` (0 = pad).

    The input is the last ``max_len + 1`` items minus the final one; the target is the same window shifted
    by one, so position t predicts item t+1.
    """
    window = pad_histories(offsets, items, rows, max_len + 1)
    return window[:, :-1], window[:, 1:]
