"""Padded, truncated history batches for sequence models.

Token convention for item-level models: token = item + 1, 0 = padding. Histories are left-padded so the
most recent item is always at the last position.
"""

from __future__ import annotations

import numpy as np
import torch


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


def history_batches(
    offsets: np.ndarray, items: np.ndarray, max_len: int, batch_size: int, device: str | torch.device = "cpu"
):
    """Yield ``(row_indices, padded_tokens)`` over all CSR rows in order."""
    n = len(offsets) - 1
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        yield rows, torch.from_numpy(pad_histories(offsets, items, rows, max_len)).to(device)


def training_windows(offsets: np.ndarray, items: np.ndarray, max_len: int, min_len: int = 2) -> np.ndarray:
    """Rows with at least ``min_len`` training items (input = seq[:-1], target = seq[1:])."""
    lengths = offsets[1:] - offsets[:-1]
    return np.nonzero(lengths >= min_len)[0]


def shifted_pair(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets for causal training, both left-padded to ``max_len`` (0 = pad).

    The input is the last ``max_len + 1`` items minus the final one; the target is the same window shifted
    by one, so position t predicts item t+1.
    """
    window = pad_histories(offsets, items, rows, max_len + 1)
    return window[:, :-1], window[:, 1:]
