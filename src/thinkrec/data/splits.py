"""Train / validation / test splits for next-item recommendation.

A split keeps, per user, the training sequence (CSR) and evaluation examples as (user, history, target):
the history is everything the model may see before the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from thinkrec.data.dataset import Dataset


@dataclass
class EvalExamples:
    """Next-item evaluation examples: ``histories`` in CSR form, one target per example."""

    users: np.ndarray  # [n] int64
    offsets: np.ndarray  # [n + 1] int64 into ``items``
    items: np.ndarray  # concatenated histories (time order)
    targets: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def history(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, idx: np.ndarray) -> EvalExamples:
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        return EvalExamples(self.users[idx], offsets, self.items[gather.astype(np.int64)], self.targets[idx])


@dataclass
class SequenceSplit:
    """Per-user training sequences (CSR over all users) plus validation and test examples."""

    n_users: int
    n_items: int
    train_offsets: np.ndarray  # [n_users + 1]
    train_items: np.ndarray
    valid: EvalExamples
    test: EvalExamples
    kind: str = "loo"

    def train_sequence(self, user: int) -> np.ndarray:
        return self.train_items[self.train_offsets[user] : self.train_offsets[user + 1]]

    @property
    def n_train_interactions(self) -> int:
        return int(self.train_items.shape[0])


def _csr_from_lengths(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _take_prefix(offsets: np.ndarray, items: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``keep[u]`` items of each user's sequence (vectorised)."""
    lengths = offsets[1:] - offsets[:-1]
    keep = np.minimum(np.maximum(keep, 0), lengths)
    pos = np.arange(items.shape[0]) - np.repeat(offsets[:-1], lengths)
    mask = pos < np.repeat(keep, lengths)
    return _csr_from_lengths(keep), items[mask]


def leave_one_out(dataset: Dataset, min_train: int = 1) -> SequenceSplit:
    """Last item = test, second last = validation, the rest = train (TIGER / S3-Rec protocol).

    Users whose sequence is too short to leave ``min_train`` training items before the validation item
    keep all but the last item for training and only get a test example when they have ≥ 2 items.
    """
    offsets, items = dataset.sequences()
    lengths = offsets[1:] - offsets[:-1]
    users = np.arange(dataset.n_users, dtype=np.int64)

    has_valid = lengths >= min_train + 2
    has_test = lengths >= 2
    train_keep = np.where(has_valid, lengths - 2, np.maximum(lengths - 1, 0))
    train_offsets, train_items = _take_prefix(offsets, items, train_keep)

    v_users = users[has_valid]
    v_hist_off, v_hist = _hist(offsets, items, v_users, lengths[v_users] - 2)
    valid = EvalExamples(v_users, v_hist_off, v_hist, items[offsets[v_users] + lengths[v_users] - 2])

    t_users = users[has_test]
    t_hist_off, t_hist = _hist(offsets, items, t_users, lengths[t_users] - 1)
    test = EvalExamples(t_users, t_hist_off, t_hist, items[offsets[t_users] + lengths[t_users] - 1])
    return SequenceSplit(dataset.n_users, dataset.n_items, train_offsets, train_items, valid, test, kind="loo")


def _hist(offsets: np.ndarray, items: np.ndarray, users: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histories = first ``keep`` items of the selected users' sequences, as CSR."""
    starts = offsets[users]
    hist_offsets = _csr_from_lengths(keep)
    idx = np.repeat(starts, keep) + (np.arange(hist_offsets[-1]) - np.repeat(hist_offsets[:-1], keep))
    return hist_offsets, items[idx]


def temporal_split(dataset: Dataset, valid_frac: float = 0.1, test_frac: float = 0.1) -> SequenceSplit:
    """Global temporal split: two cut-off times at the (1 − valid − test) and (1 − test) quantiles of ``ts``.

    Training = every interaction before the first cut. A user active in a later window gets one example
    there: the first interaction in the window as target, all earlier interactions as history (so history
    may include earlier-window items the model was not trained on, as in production).
    """
    if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError("valid_frac and test_frac must be in (0, 1) and sum below 1")
    offsets, items = dataset.sequences()
    ts = dataset.interactions["ts"].to_numpy()
    t_valid, t_test = np.quantile(ts, [1 - valid_frac - test_frac, 1 - test_frac])
    lengths = offsets[1:] - offsets[:-1]
    user_of = np.repeat(np.arange(dataset.n_users), lengths)

    train_keep = np.bincount(user_of[ts < t_valid], minlength=dataset.n_users)
    train_offsets, train_items = _take_prefix(offsets, items, train_keep)

    def window(lo: float, hi: float) -> EvalExamples:
        in_win = (ts >= lo) & (ts < hi) if np.isfinite(hi) else ts >= lo
        first = pl.DataFrame({"u": user_of[in_win], "pos": np.nonzero(in_win)[0]}).group_by("u").agg(pl.col("pos").min()).sort("u")
        us = first["u"].to_numpy().astype(np.int64)
        pos = first["pos"].to_numpy().astype(np.int64)
        keep = pos - offsets[us]
        ok = keep >= 1
        us, pos, keep = us[ok], pos[ok], keep[ok]
        h_off, h_items = _hist(offsets, items, us, keep)
        return EvalExamples(us, h_off, h_items, items[pos])

    return SequenceSplit(
        dataset.n_users, dataset.n_items, train_offsets, train_items, window(t_valid, t_test), window(t_test, np.inf), kind="temporal"
    )


def make_split(dataset: Dataset, kind: str = "loo", **kwargs: float) -> SequenceSplit:
    if kind in ("loo", "leave-one-out", "leave_one_out"):
        return leave_one_out(dataset)
    if kind in ("temporal", "global-temporal", "global_temporal"):
        return temporal_split(dataset, **kwargs)
    raise ValueError(f"unknown split {kind!r}; use 'loo' or 'temporal'")
