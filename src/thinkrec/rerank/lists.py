"""One list format for re-ranking, from impression logs and from the funnel.

A :class:`RerankLists` holds ``n`` requests, each a user context (history) and up to ``L`` candidates *in their
initial order* (the logging policy's display order, or the retriever's ranking), with labels (clicks, or 1 for
the true next item) and per-candidate dense features. Re-rankers return a permutation of each list.

Candidate features (``FEATURES``) are computed from behaviour that precedes the request, never from labels:
impression lists take item statistics from the users' pre-impression histories; funnel lists from the
training sequences of the split (the validation and test targets are never in them).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import EvalExamples, SequenceSplit
from thinkrec.errors import DataRequirementError
from thinkrec.utils.io import atomic_dir

FEATURES = (
    "init_pos",  # initial position / (L - 1)
    "init_score_z",  # initial score standardised within the list (0 when the source has no scores)
    "log_pop",  # log1p(item count in the statistics sequences), scaled to [0, 1]
    "log_transition",  # log1p(count of last history item -> candidate transitions)
    "same_cat_last",  # candidate shares the category of the last history item
    "cat_share_hist",  # share of the last 10 history items in the candidate's category
    "in_history",  # candidate already in the history
    "cos_last",  # content cosine to the last history item (0 without item vectors)
    "cos_hist",  # content cosine to the mean of the last 10 history items (0 without item vectors)
)
N_FEATURES = len(FEATURES)
RECENT = 10
# Lists over merged candidates add, per candidate source, these columns after FEATURES (named "<source>:<f>").
SOURCE_FEATURES = (
    "recip_rank",  # 1 / (1 + the source's rank of the candidate); 0 where the source did not return it
    "score_z",  # the source's score standardised over the list's candidates it returned; 0 where missing
    "missing",  # 1 where the source did not return the candidate
)


def feature_names(sources: tuple[str, ...] = ()) -> tuple[str, ...]:
    return FEATURES + tuple(f"{s}:{f}" for s in sources for f in SOURCE_FEATURES)


def source_features(ranks: np.ndarray, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[n, L, 3 S]`` from per-source ranks (−1 = missing) and scores ``[n, L, S]``."""
    present = (ranks >= 0) & valid[..., None]
    recip = np.where(present, 1.0 / (1.0 + np.maximum(ranks, 0)), 0.0)
    s = np.where(present, scores, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a source missing from a whole list: mean of nothing
        mu, sd = np.nanmean(s, 1, keepdims=True), np.nanstd(s, 1, keepdims=True)
    z = np.nan_to_num((s - mu) / np.maximum(np.nan_to_num(sd), 1e-6))
    out = np.stack([recip, z, (~present & valid[..., None]).astype(np.float64)], -1)  # [n, L, S, 3]
    return out.reshape(*ranks.shape[:2], -1).astype(np.float32)


@dataclass
class RerankLists:
    """Padded re-ranking requests. ``items`` −1 marks padding; lists are in their initial order."""

    users: np.ndarray  # [n] int64
    history: np.ndarray  # [n, H] int64 item id + 1, 0 = padding, left-padded (most recent last)
    items: np.ndarray  # [n, L] int64, -1 = padding
    labels: np.ndarray  # [n, L] float32
    features: np.ndarray  # [n, L, F] float32
    item_category: np.ndarray  # [n_items] int64 category id (0 = unknown)
    source: str = "impressions"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def list_len(self) -> int:
        return int(self.items.shape[1])

    @property
    def mask(self) -> np.ndarray:
        return self.items >= 0

    @property
    def n_items(self) -> int:
        return int(self.item_category.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[-1])

    @property
    def sources(self) -> tuple[str, ...]:
        """The candidate sources whose ranks and scores are features (empty for single-source lists)."""
        return tuple(self.meta.get("sources", ()))

    @property
    def n_categories(self) -> int:
        return int(self.item_category.max(initial=0)) + 1

    def subset(self, idx: np.ndarray) -> RerankLists:
        idx = np.asarray(idx, dtype=np.int64)
        return RerankLists(self.users[idx], self.history[idx], self.items[idx], self.labels[idx], self.features[idx],
                           self.item_category, self.source, dict(self.meta))

    def reordered(self, orders: np.ndarray) -> RerankLists:
        """The same lists with each one's candidates in ``orders`` (``[n, L]`` candidate indices, best first, as
        :func:`thinkrec.rerank.train.rerank_orders` returns): a re-ranker's order becomes the initial one."""
        orders = np.asarray(orders, dtype=np.int64)
        if orders.shape != self.items.shape:
            raise ValueError(f"orders have shape {orders.shape}, the lists {self.items.shape}")
        take = lambda a: np.take_along_axis(a, orders.reshape(orders.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
        return RerankLists(self.users.copy(), self.history.copy(), take(self.items), take(self.labels),
                           take(self.features), self.item_category, self.source, dict(self.meta))

    def with_positives(self) -> RerankLists:
        """Only the lists with at least one positive label (supervised ranking losses need one)."""
        return self.subset(np.nonzero((self.labels > 0).any(1))[0])

    def tensors(self, idx: np.ndarray | None = None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        items = self.items[idx]
        return {
            "history": torch.from_numpy(self.history[idx]).to(device),
            "items": torch.from_numpy(np.maximum(items, 0) + 1).to(device) * torch.from_numpy(items >= 0).to(device),
            "mask": torch.from_numpy(items >= 0).to(device),
            "category": torch.from_numpy(self.item_category[np.maximum(items, 0)] * (items >= 0)).to(device),
            "features": torch.from_numpy(self.features[idx]).to(device),
            "labels": torch.from_numpy(self.labels[idx]).to(device),
        }

    # -- persistence (safetensors for arrays, JSON for the rest; written atomically)
    def save(self, path: str | Path) -> Path:
        with atomic_dir(path) as tmp:
            save_file({"users": self.users, "history": self.history, "items": self.items, "labels": self.labels,
                       "features": self.features, "item_category": self.item_category}, str(tmp / "lists.safetensors"))
            (tmp / "meta.json").write_text(json.dumps({"source": self.source, "meta": self.meta,
                                                       "features": feature_names(self.sources)}, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RerankLists:
        path = Path(path)
        if not (path / "lists.safetensors").exists():
            raise FileNotFoundError(f"{path}: no lists.safetensors (build the re-ranking lists first)")
        arrays = load_file(str(path / "lists.safetensors"))
        info = json.loads((path / "meta.json").read_text())
        expected = feature_names(tuple(info["meta"].get("sources", ())))
        if tuple(info.get("features", ())) != expected or arrays["features"].shape[-1] != len(expected):
            raise ValueError(f"{path}: lists were built with features {info.get('features')}, this version uses {expected}")
        return cls(arrays["users"], arrays["history"], arrays["items"], arrays["labels"], arrays["features"],
                   arrays["item_category"], info["source"], info["meta"])


# ---------------------------------------------------------------------------------------------- statistics
def item_categories(dataset: Dataset) -> np.ndarray:
    """Dense category id per item from the most specific category name (0 = none)."""
    items = dataset.items.sort("item")
    if "categories" not in items.columns:
        return np.zeros(dataset.n_items, dtype=np.int64)
    names = [c[-1] if c else "" for c in items["categories"].to_list()]
    vocab: dict[str, int] = {"": 0}
    return np.array([vocab.setdefault(n, len(vocab)) for n in names], dtype=np.int64)


class ItemStats:
    """Popularity and first-order transition counts over a set of sequences (vectorised lookups)."""

    def __init__(self, sequences: list[np.ndarray], n_items: int):
        self.n_items = n_items
        flat = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
        self.popularity = np.bincount(flat, minlength=n_items).astype(np.float64)
        src = np.concatenate([s[:-1] for s in sequences]) if sequences else np.zeros(0, np.int64)
        dst = np.concatenate([s[1:] for s in sequences]) if sequences else np.zeros(0, np.int64)
        keys, counts = np.unique(src.astype(np.int64) * n_items + dst, return_counts=True)
        self.keys, self.counts = keys, counts.astype(np.float64)

    @classmethod
    def from_tables(cls, popularity: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> ItemStats:
        stats = cls.__new__(cls)
        stats.n_items, stats.popularity = int(popularity.shape[0]), popularity.astype(np.float64)
        stats.keys, stats.counts = keys.astype(np.int64), counts.astype(np.float64)
        return stats

    def transitions(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        q = src.astype(np.int64) * self.n_items + dst
        pos = np.clip(np.searchsorted(self.keys, q), 0, max(len(self.keys) - 1, 0))
        hit = (self.keys[pos] == q) if len(self.keys) else np.zeros(q.shape, bool)
        return np.where(hit & (src >= 0) & (dst >= 0), self.counts[pos] if len(self.keys) else 0.0, 0.0)


def build_features(items: np.ndarray, histories: list[np.ndarray], stats: ItemStats, category: np.ndarray,
                   init_scores: np.ndarray | None = None, item_vectors: np.ndarray | None = None,
                   unit_vectors: bool = False) -> np.ndarray:
    """``[n, L, F]`` candidate features (see ``FEATURES``); ``items`` −1 padded, ``histories`` item ids;
    ``unit_vectors``: ``item_vectors`` are already L2-normalised (the featurizer normalises its table once)."""
    n, L = items.shape
    valid = items >= 0
    safe = np.maximum(items, 0)
    feats = np.zeros((n, L, N_FEATURES), dtype=np.float32)
    feats[..., 0] = np.arange(L)[None, :] / max(L - 1, 1)
    if init_scores is not None:
        s = np.where(valid, init_scores, np.nan)
        mu, sd = np.nanmean(s, 1, keepdims=True), np.nanstd(s, 1, keepdims=True)
        feats[..., 1] = np.nan_to_num((s - mu) / np.maximum(sd, 1e-6))
    log_pop = np.log1p(stats.popularity)
    feats[..., 2] = log_pop[safe] / max(log_pop.max(initial=0.0), 1e-6)
    recent = np.full((n, RECENT), -1, dtype=np.int64)
    for b, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-RECENT:]
        recent[b, RECENT - tail.size:] = tail
    last = recent[:, -1]
    feats[..., 3] = np.log1p(stats.transitions(np.broadcast_to(last[:, None], items.shape), safe))
    cat = category[safe]
    has_last = last >= 0
    feats[..., 4] = (cat == category[np.maximum(last, 0)][:, None]) & has_last[:, None] & (cat > 0)
    rc = np.where(recent >= 0, category[np.maximum(recent, 0)], -1)
    n_recent = np.maximum((recent >= 0).sum(1), 1)
    feats[..., 5] = ((cat[:, :, None] == rc[:, None, :]) & (cat[:, :, None] > 0)).sum(-1) / n_recent[:, None]
    hist_sets = [set(np.asarray(h).tolist()) for h in histories]
    feats[..., 6] = np.array([[it in hs for it in row] for row, hs in zip(items.tolist(), hist_sets, strict=True)], dtype=np.float32)
    if item_vectors is not None:
        v = item_vectors if unit_vectors else unit_rows(item_vectors)
        cand = v[safe]  # [n, L, d]
        feats[..., 7] = np.einsum("nld,nd->nl", cand, v[np.maximum(last, 0)]) * has_last[:, None]
        rv = np.where((recent >= 0)[..., None], v[np.maximum(recent, 0)], 0.0).sum(1)
        rv /= np.maximum(np.linalg.norm(rv, axis=1, keepdims=True), 1e-9)
        feats[..., 8] = np.einsum("nld,nd->nl", cand, rv)
    return np.where(valid[..., None], feats, 0.0).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


class ListFeaturizer:
    """What candidate features are computed from: item statistics, categories and item vectors. Saved with the
    lists (``save``/``load``) so a re-ranker scores new requests with the tables its training lists used."""

    def __init__(self, stats: ItemStats, category: np.ndarray, item_vectors: np.ndarray | None = None,
                 sources: tuple[str, ...] = ()):
        self.stats, self.category = stats, np.asarray(category, dtype=np.int64)
        self.item_vectors = None if item_vectors is None else np.asarray(item_vectors, dtype=np.float32)
        # normalised once: per request it would cost a pass over the whole catalogue's vectors
        self._unit = None if self.item_vectors is None else unit_rows(self.item_vectors).astype(np.float32)
        self.sources = tuple(sources)

    @property
    def n_items(self) -> int:
        return int(self.category.shape[0])

    @property
    def n_features(self) -> int:
        return len(feature_names(self.sources))

    def features(self, items: np.ndarray, histories: list[np.ndarray], init_scores: np.ndarray | None = None,
                 source_ranks: np.ndarray | None = None, source_scores: np.ndarray | None = None) -> np.ndarray:
        """FEATURES, then (with sources) each source's SOURCE_FEATURES from its ranks / scores ``[n, L, S]``."""
        base = build_features(items, histories, self.stats, self.category, init_scores, self._unit, unit_vectors=True)
        if not self.sources:
            return base
        if source_ranks is None or source_ranks.shape[-1] != len(self.sources):
            raise ValueError(f"featurizer for sources {list(self.sources)} needs their ranks [n, L, {len(self.sources)}]")
        return np.concatenate([base, source_features(source_ranks, source_scores, items >= 0)], -1)

    def lists(self, users: np.ndarray, histories: list[np.ndarray], items: np.ndarray, labels: np.ndarray | None,
              init_scores: np.ndarray | None, history_len: int, source: str, meta: dict[str, Any] | None = None,
              source_ranks: np.ndarray | None = None, source_scores: np.ndarray | None = None) -> RerankLists:
        """Requests (users, histories as item-id arrays, candidates −1 padded) as :class:`RerankLists`."""
        items = np.asarray(items, dtype=np.int64)
        labels = np.zeros(items.shape, np.float32) if labels is None else np.asarray(labels, np.float32)
        meta = {**(meta or {}), **({"sources": list(self.sources)} if self.sources else {})}
        feats = self.features(items, histories, init_scores, source_ranks, source_scores)
        return RerankLists(np.asarray(users, np.int64), pad_left(histories, history_len), items, labels, feats,
                           self.category, source, meta)

    def save(self, path: str | Path) -> Path:
        arrays = {"popularity": self.stats.popularity, "transition_keys": self.stats.keys,
                  "transition_counts": self.stats.counts, "item_category": self.category}
        if self.item_vectors is not None:
            arrays["item_vectors"] = self.item_vectors
        with atomic_dir(path) as tmp:
            save_file(arrays, str(tmp / "featurizer.safetensors"))
            (tmp / "meta.json").write_text(json.dumps({"features": feature_names(self.sources), "n_items": self.n_items,
                                                       "sources": list(self.sources)}, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ListFeaturizer:
        path = Path(path)
        info = json.loads((path / "meta.json").read_text())
        sources = tuple(info.get("sources", ()))
        if tuple(info.get("features", ())) != feature_names(sources):
            raise ValueError(f"{path}: featurizer for features {info.get('features')}, this version uses {feature_names(sources)}")
        a = load_file(str(path / "featurizer.safetensors"))
        stats = ItemStats.from_tables(a["popularity"], a["transition_keys"], a["transition_counts"])
        return cls(stats, a["item_category"], a.get("item_vectors"), sources)


def pad_left(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for b, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-max_len:]
        if tail.size:
            out[b, max_len - tail.size:] = tail + 1
    return out


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class ImpressionRequests:
    """Logged impressions in time order: who saw which slate after which history, and what was clicked."""

    users: np.ndarray
    histories: list[np.ndarray]
    items: np.ndarray  # [n, L] −1 padded
    labels: np.ndarray  # [n, L] clicks
    meta: dict[str, Any]


def impression_requests(dataset: Dataset, max_len: int = 50) -> ImpressionRequests:
    """Every logged impression (display order = initial order), truncated to ``max_len`` shown items."""
    imps = dataset.impressions
    if imps is None or imps.height == 0:
        raise DataRequirementError(f"dataset {dataset.name!r} has no impressions")
    imps = imps.sort(["ts", "impression"])
    lists = [np.asarray(x, dtype=np.int64)[:max_len] for x in imps["items"].to_list()]
    clicks = [np.asarray(x, dtype=np.float32)[:max_len] for x in imps["clicks"].to_list()]
    histories = [np.asarray(h if h is not None else [], dtype=np.int64) for h in imps["history"].to_list()]
    L = max(len(x) for x in lists)
    items = np.full((len(lists), L), -1, dtype=np.int64)
    labels = np.zeros((len(lists), L), dtype=np.float32)
    for b, (it, cl) in enumerate(zip(lists, clicks, strict=True)):
        items[b, : it.size] = it
        labels[b, : cl.size] = cl
    meta = {"dataset": dataset.name, "ts": imps["ts"].to_list(), "has_click_model": dataset.meta.get("generator") == "thinkrec.data.synthetic"}
    return ImpressionRequests(imps["user"].to_numpy().astype(np.int64), histories, items, labels, meta)


def impression_lists(dataset: Dataset, max_len: int = 50, history_len: int = 50, item_vectors: np.ndarray | None = None,
                     featurizer: ListFeaturizer | None = None) -> tuple[RerankLists, ListFeaturizer]:
    """Impressions as lists, with the featurizer their features come from.

    Statistics for features come from the users' pre-impression histories (each user's longest), so no click
    label of any impression leaks into any feature.
    """
    req = impression_requests(dataset, max_len)
    if featurizer is None:
        longest: dict[int, np.ndarray] = {}
        for u, h in zip(req.users.tolist(), req.histories, strict=True):
            if h.size > longest.get(u, np.zeros(0)).size:
                longest[u] = h
        featurizer = ListFeaturizer(ItemStats(list(longest.values()), dataset.n_items), item_categories(dataset), item_vectors)
    lists = featurizer.lists(req.users, req.histories, req.items, req.labels, None, history_len, "impressions", req.meta)
    return lists, featurizer


def temporal_thirds(lists: RerankLists, valid_frac: float = 0.1, test_frac: float = 0.1) -> tuple[RerankLists, RerankLists, RerankLists]:
    """Split impression lists by time (they are sorted by time): train / valid / test."""
    n = len(lists)
    n_test, n_valid = max(1, int(round(n * test_frac))), max(1, int(round(n * valid_frac)))
    idx = np.arange(n)
    return lists.subset(idx[: n - n_valid - n_test]), lists.subset(idx[n - n_valid - n_test: n - n_test]), lists.subset(idx[n - n_test:])


def funnel_lists(examples: EvalExamples, candidates: np.ndarray, scores: np.ndarray | None, split: SequenceSplit,
                 category: np.ndarray, history_len: int = 50, item_vectors: np.ndarray | None = None,
                 source: str = "funnel", featurizer: ListFeaturizer | None = None,
                 source_ranks: np.ndarray | None = None, source_scores: np.ndarray | None = None) -> RerankLists:
    """Lists from a retriever's top-K for each evaluation example; label 1 on the true next item (if retrieved).

    ``candidates`` [n, K] item ids in the retriever's order (−1 where fewer were returned), ``scores`` their
    retrieval scores (merged candidates: None, with each source's ``source_ranks`` / ``source_scores``
    [n, K, S]). Statistics come from ``split``'s training sequences only.
    """
    if candidates.shape[0] != len(examples):
        raise ValueError(f"{candidates.shape[0]} candidate rows for {len(examples)} examples")
    featurizer = featurizer or funnel_featurizer(split, category, item_vectors)
    histories = [examples.history(i) for i in range(len(examples))]
    items = np.asarray(candidates, dtype=np.int64)
    labels = ((items == examples.targets[:, None]) & (items >= 0)).astype(np.float32)
    meta = {"targets": examples.targets.tolist(), "recall_at_k": float(labels.any(1).mean())}
    return featurizer.lists(examples.users, histories, items, labels, scores, history_len, source, meta,
                            source_ranks, source_scores)


def funnel_featurizer(split: SequenceSplit, category: np.ndarray, item_vectors: np.ndarray | None = None,
                      sources: tuple[str, ...] = ()) -> ListFeaturizer:
    """Funnel-list features: statistics from the split's training sequences only."""
    seqs = [split.train_sequence(u) for u in range(split.n_users)]
    return ListFeaturizer(ItemStats([s for s in seqs if s.size], split.n_items), category, item_vectors, sources)
