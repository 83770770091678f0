"""The seen-item policy: may a recommended list hold items the user already has?

One policy, used identically by evaluation, every candidate source, the re-ranking lists, ``recommend``, serving
and the page (``eval.seen``):

- ``exclude``: items of the history never appear in a list; a target the user already had counts as a miss
  (a live request cannot know it will be repeated) — the field's protocol (SASRec / BSARec / WEARec code masks
  the history's items when ranking).
- ``keep``: lists may repeat history items.
- ``auto`` (default): measure the **repeat share** of the training split — the share of next items (every
  position but the first of each training sequence) already in the sequence before them — and exclude when it
  is below ``eval.seen_threshold`` (default 0.05: when fewer than 1 in 20 next items are repeats, a seen item in
  the list is almost always a wasted slot).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

SEEN_POLICIES = ("auto", "exclude", "keep")
DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class SeenDecision:
    policy: str  # as configured: auto | exclude | keep
    exclude: bool  # what every path does
    repeat_share: float  # measured on the training split
    threshold: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repeat_share(offsets: np.ndarray, items: np.ndarray) -> float:
    """Share of next items already earlier in their sequence (CSR sequences: ``items[offsets[u]:offsets[u+1]]``,
    oldest first); 0.0 without any sequence of length ≥ 2."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    steps = int(np.maximum(lengths - 1, 0).sum())
    if steps == 0:
        return 0.0
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    n = int(np.asarray(items).max(initial=0)) + 1
    distinct = np.unique(users * n + np.asarray(items, dtype=np.int64)).size
    # every position whose (user, item) pair occurred before in the sequence is a repeat; the first never is
    return float((len(users) - distinct) / steps)


def decide(policy: str, share: float, threshold: float = DEFAULT_THRESHOLD) -> SeenDecision:
    if policy not in SEEN_POLICIES:
        raise ValueError(f"seen policy must be one of {SEEN_POLICIES}, got {policy!r}")
    if policy != "auto":
        return SeenDecision(policy, policy == "exclude", share, threshold, f"configured: eval.seen = {policy}")
    exclude = share < threshold
    why = (f"auto: {share:.2%} of training next items repeat an item of their history "
           f"({'below' if exclude else 'at or above'} the {threshold:.0%} threshold) → "
           + ("seen items are excluded" if exclude else "seen items are kept"))
    return SeenDecision(policy, exclude, share, threshold, why)


def resolve_seen(policy: str, threshold: float, train_offsets: np.ndarray, train_items: np.ndarray) -> SeenDecision:
    """The decision for a run: ``policy`` with the repeat share of its training sequences (CSR)."""
    return decide(policy, repeat_share(train_offsets, train_items), threshold)


def seen_mask(items: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """``[B, n]``: whether ``items[b, j]`` (−1 = padding, never seen) occurs in ``histories[b]``; one sort over
    all (row, item) pairs, no loop over rows."""
    items = np.asarray(items, dtype=np.int64)
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    if lengths.sum() == 0:
        return np.zeros(items.shape, bool)
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    n = int(max(items.max(initial=0), flat.max(initial=0))) + 2
    keys = np.unique(np.repeat(np.arange(len(histories), dtype=np.int64), lengths) * n + flat)
    q = np.arange(len(items), dtype=np.int64)[:, None] * n + np.maximum(items, 0)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return (keys[pos] == q) & (items >= 0)


def drop_seen(items: np.ndarray, scores: np.ndarray, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Top-K lists without the history's items: seen ones removed, the rest moved up in order, −1 / −inf padded."""
    seen = seen_mask(items, histories)
    items, scores = np.where(seen, -1, items), np.where(seen, -np.inf, scores)
    front = np.argsort(items < 0, axis=1, kind="stable")  # real items first, their order kept
    return np.take_along_axis(items, front, 1), np.take_along_axis(scores, front, 1)


def mask_seen_scores(scores: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
    """Full-catalogue scores ``[B, n_items]`` with every history item set to −inf (a copy)."""
    lengths = [len(h) for h in histories]
    if not sum(lengths):
        return scores
    rows = torch.from_numpy(np.repeat(np.arange(len(histories)), lengths)).to(scores.device)
    cols = torch.from_numpy(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])).to(scores.device)
    scores = scores.clone()
    scores[rows, cols] = float("-inf")
    return scores
