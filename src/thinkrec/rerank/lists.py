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
from thinkrec.data.seen import seen_mask
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
LAST_FEW = 3  # history items the per-item group features look back to
# Optional groups of candidate features (``rerank.feature_groups``), after FEATURES in this order; each reads only
# the training sequences and the catalogue (never a validation / test target). A group whose table the featurizer
# lacks (no Semantic IDs, no brands) is left out of the lists' features and says so in their meta.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "cooc": (
        "log_transition_2",  # log1p(count of 2nd-last history item -> candidate transitions)
        "log_transition_3",  # … from the 3rd-last
        "log_cooc_recent",  # log1p(co-occurrences within 3 positions, either order) summed over the last 3 items
        "transition_prob",  # transitions last -> candidate / all transitions out of the last item
    ),
    "sid": (  # Semantic-ID code prefix shared with history items / number of levels (what SIDs add to ranking)
        "sid_prefix_1", "sid_prefix_2", "sid_prefix_3",  # with the last, 2nd-last and 3rd-last item
        "sid_prefix_max",  # the longest over the last 10
        "sid_prefix_share",  # share of the last 10 sharing at least the first code with the candidate
    ),
    "brand": (
        "same_brand_last",  # candidate's brand = the last history item's (known brands only)
        "brand_share_hist",  # share of the last 10 history items of the candidate's brand
        "top_cat_share_hist",  # share of the last 10 in the candidate's top-level category
    ),
    "trend": (  # sequence-lifecycle trend (the S3-Rec Amazon data carry order, not calendar time)
        "log_late_pop",  # log1p(count among the last 3 items of training sequences), scaled to [0, 1]
        "late_share",  # (late count + 1) / (count + 3): bought late in a customer's sequence rather than early
    ),
}
GROUP_NAMES = tuple(FEATURE_GROUPS)
# Lists over merged candidates add, per candidate source, these columns after FEATURES (named "<source>:<f>").
SOURCE_FEATURES = (
    "recip_rank",  # 1 / (1 + the source's rank of the candidate); 0 where the source did not return it
    "score_z",  # the source's score standardised over the list's candidates it returned; 0 where missing
    "missing",  # 1 where the source did not return the candidate
)


def feature_names(sources: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Column names: FEATURES, each group's (in ``GROUP_NAMES`` order), then each source's SOURCE_FEATURES."""
    extra = tuple(f for g in GROUP_NAMES if g in groups for f in FEATURE_GROUPS[g])
    return FEATURES + extra + tuple(f"{s}:{f}" for s in sources for f in SOURCE_FEATURES)


def group_columns(names: tuple[str, ...], group: str) -> list[int]:
    """Column indices of one feature group (``sources`` for every per-source column) among ``names``."""
    if group == "sources":
        return [i for i, n in enumerate(names) if ":" in n]
    if group not in FEATURE_GROUPS:
        raise ValueError(f"unknown feature group {group!r}; known: {', '.join((*GROUP_NAMES, 'sources'))}")
    want = set(FEATURE_GROUPS[group])
    return [i for i, n in enumerate(names) if n in want]


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
    def groups(self) -> tuple[str, ...]:
        """The optional feature groups in the features (see ``FEATURE_GROUPS``)."""
        return tuple(self.meta.get("feature_groups", ()))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.sources, self.groups)

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
                                                       "features": self.feature_names}, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RerankLists:
        path = Path(path)
        if not (path / "lists.safetensors").exists():
            raise FileNotFoundError(f"{path}: no lists.safetensors (build the re-ranking lists first)")
        arrays = load_file(str(path / "lists.safetensors"))
        info = json.loads((path / "meta.json").read_text())
        expected = feature_names(tuple(info["meta"].get("sources", ())), tuple(info["meta"].get("feature_groups", ())))
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
    """Item statistics over a set of sequences (vectorised lookups): popularity, first-order transitions,
    co-occurrences within ``window`` positions (either order), each item's out-transitions and its count among
    the last ``late`` items of the sequences."""

    def __init__(self, sequences: list[np.ndarray], n_items: int, window: int = LAST_FEW, late: int = LAST_FEW):
        self.n_items = n_items
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        self.popularity = np.bincount(flat, minlength=n_items).astype(np.float64)
        self.keys, self.counts = self._pairs(seqs, 1, directed=True)
        self.cooc_keys, self.cooc_counts = self._pairs(seqs, window, directed=False)
        src = np.concatenate([s[:-1] for s in seqs]) if seqs else np.zeros(0, np.int64)
        self.out_count = np.bincount(src, minlength=n_items).astype(np.float64)
        tail = np.concatenate([s[-late:] for s in seqs]) if seqs else np.zeros(0, np.int64)
        self.late_count = np.bincount(tail, minlength=n_items).astype(np.float64)

    def _pairs(self, seqs: list[np.ndarray], window: int, directed: bool) -> tuple[np.ndarray, np.ndarray]:
        """Sorted pair keys ``a * n_items + b`` and counts of b following a within ``window`` positions (and, not
        ``directed``, the reverse pair too)."""
        parts = []
        for gap in range(1, window + 1):
            long = [s for s in seqs if s.size > gap]
            if not long:
                break
            src, dst = np.concatenate([s[:-gap] for s in long]), np.concatenate([s[gap:] for s in long])
            parts.append(src * self.n_items + dst)
            if not directed:
                parts.append(dst * self.n_items + src)
        keys = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        keys, counts = np.unique(keys, return_counts=True)
        return keys.astype(np.int64), counts.astype(np.float64)

    @classmethod
    def from_tables(cls, tables: dict[str, np.ndarray]) -> ItemStats:
        stats = cls.__new__(cls)
        stats.popularity = tables["popularity"].astype(np.float64)
        stats.n_items = int(stats.popularity.shape[0])
        stats.keys, stats.counts = tables["transition_keys"].astype(np.int64), tables["transition_counts"].astype(np.float64)
        stats.cooc_keys, stats.cooc_counts = tables["cooc_keys"].astype(np.int64), tables["cooc_counts"].astype(np.float64)
        stats.out_count, stats.late_count = tables["out_count"].astype(np.float64), tables["late_count"].astype(np.float64)
        return stats

    def tables(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity, "transition_keys": self.keys, "transition_counts": self.counts,
                "cooc_keys": self.cooc_keys, "cooc_counts": self.cooc_counts, "out_count": self.out_count,
                "late_count": self.late_count}

    @staticmethod
    def _lookup(keys: np.ndarray, counts: np.ndarray, n_items: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        q = np.maximum(src, 0).astype(np.int64) * n_items + np.maximum(dst, 0)
        if not len(keys):
            return np.zeros(q.shape)
        pos = np.clip(np.searchsorted(keys, q), 0, len(keys) - 1)
        return np.where((keys[pos] == q) & (src >= 0) & (dst >= 0), counts[pos], 0.0)

    def transitions(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return self._lookup(self.keys, self.counts, self.n_items, src, dst)

    def cooccurrences(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return self._lookup(self.cooc_keys, self.cooc_counts, self.n_items, src, dst)


@dataclass
class ItemTables:
    """Per-item tables the optional feature groups read besides the statistics: Semantic-ID codes ``[n_items,
    levels]`` (``sid``), brand ids and top-level category ids (``brand``; 0 = unknown)."""

    sid_codes: np.ndarray | None = None
    brand: np.ndarray | None = None
    top_category: np.ndarray | None = None

    def available(self, groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """The requested groups these tables can compute, in ``GROUP_NAMES`` order."""
        ok = {"cooc": True, "trend": True, "sid": self.sid_codes is not None,
              "brand": self.brand is not None and bool((self.brand > 0).any())}
        return tuple(g for g in GROUP_NAMES if g in groups and ok[g])


def item_tables(dataset: Dataset, sid_codes: np.ndarray | None = None) -> ItemTables:
    """Brand ids (``Unknown`` / empty = 0) and top-level category ids (the second category name, under the
    catalogue's root, else the first; 0 = none) from the catalogue, with the run's Semantic-ID codes."""
    items = dataset.items.sort("item")

    def ids(values: list[Any]) -> np.ndarray:
        vocab: dict[str, int] = {}
        return np.array([0 if not v or str(v).strip().lower() in ("unknown", "none", "nan")
                         else vocab.setdefault(str(v), len(vocab) + 1) for v in values], dtype=np.int64)

    brand = ids(items["brand"].to_list()) if "brand" in items.columns else None
    top = ids([(c[1] if len(c) > 1 else c[0]) if c else None for c in items["categories"].to_list()]) \
        if "categories" in items.columns else None
    return ItemTables(None if sid_codes is None else np.asarray(sid_codes, dtype=np.int64), brand, top)


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
    recent = recent_items(histories)
    last = recent[:, -1]
    feats[..., 3] = np.log1p(stats.transitions(np.broadcast_to(last[:, None], items.shape), safe))
    cat = category[safe]
    has_last = last >= 0
    feats[..., 4] = (cat == category[np.maximum(last, 0)][:, None]) & has_last[:, None] & (cat > 0)
    rc = np.where(recent >= 0, category[np.maximum(recent, 0)], -1)
    n_recent = np.maximum((recent >= 0).sum(1), 1)
    feats[..., 5] = ((cat[:, :, None] == rc[:, None, :]) & (cat[:, :, None] > 0)).sum(-1) / n_recent[:, None]
    feats[..., 6] = seen_mask(items, histories)
    if item_vectors is not None:
        v = item_vectors if unit_vectors else unit_rows(item_vectors)
        cand = v[safe]  # [n, L, d]
        feats[..., 7] = np.einsum("nld,nd->nl", cand, v[np.maximum(last, 0)]) * has_last[:, None]
        rv = np.where((recent >= 0)[..., None], v[np.maximum(recent, 0)], 0.0).sum(1)
        rv /= np.maximum(np.linalg.norm(rv, axis=1, keepdims=True), 1e-9)
        feats[..., 8] = np.einsum("nld,nd->nl", cand, rv)
    return np.where(valid[..., None], feats, 0.0).astype(np.float32)


def recent_items(histories: list[np.ndarray], n: int = RECENT) -> np.ndarray:
    """``[B, n]`` the last ``n`` items of each history, right-aligned (most recent last), −1 padded."""
    recent = np.full((len(histories), n), -1, dtype=np.int64)
    for b, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-n:]
        recent[b, n - tail.size:] = tail
    return recent


def group_features(items: np.ndarray, histories: list[np.ndarray], stats: ItemStats, tables: ItemTables,
                   groups: tuple[str, ...]) -> np.ndarray:
    """``[n, L, F]`` the optional groups' columns (``FEATURE_GROUPS``, in ``GROUP_NAMES`` order) for −1 padded
    candidates and item-id histories."""
    n, L = items.shape
    safe, valid = np.maximum(items, 0), items >= 0
    recent = recent_items(histories)
    has = recent >= 0  # [n, R]
    n_recent = np.maximum(has.sum(1), 1)[:, None]
    cols: list[np.ndarray] = []
    for g in GROUP_NAMES:
        if g not in groups:
            continue
        if g == "cooc":
            for back in (2, 3):
                cols.append(np.log1p(stats.transitions(np.broadcast_to(recent[:, -back, None], items.shape), items)))
            few = recent[:, -LAST_FEW:]
            co = stats.cooccurrences(np.broadcast_to(few[:, None, :], (n, L, LAST_FEW)), items[:, :, None])
            cols.append(np.log1p(co).sum(-1))
            last = recent[:, -1]
            out = stats.out_count[np.maximum(last, 0)] * (last >= 0)
            cols.append(stats.transitions(np.broadcast_to(last[:, None], items.shape), items) / np.maximum(out, 1.0)[:, None])
        elif g == "sid":
            codes = tables.sid_codes
            levels = codes.shape[1]
            cand = codes[safe]  # [n, L, levels]
            hist = codes[np.maximum(recent, 0)]  # [n, R, levels]
            # leading levels equal: a cumulative product over levels of the per-level equality
            prefix = np.cumprod(cand[:, :, None, :] == hist[:, None, :, :], axis=-1).sum(-1) * has[:, None, :]  # [n, L, R]
            for back in (1, 2, 3):
                cols.append(prefix[:, :, -back] / levels)
            cols.append(prefix.max(-1) / levels)
            cols.append((prefix >= 1).sum(-1) / n_recent)
        elif g == "brand":
            brand = tables.brand
            cb, hb = brand[safe], np.where(has, brand[np.maximum(recent, 0)], -1)
            cols.append(((cb == hb[:, -1:]) & (cb > 0)).astype(np.float64))
            cols.append(((cb[:, :, None] == hb[:, None, :]) & (cb[:, :, None] > 0)).sum(-1) / n_recent)
            if tables.top_category is not None:
                ct, ht = tables.top_category[safe], np.where(has, tables.top_category[np.maximum(recent, 0)], -1)
                cols.append(((ct[:, :, None] == ht[:, None, :]) & (ct[:, :, None] > 0)).sum(-1) / n_recent)
            else:
                cols.append(np.zeros((n, L)))
        elif g == "trend":
            late = np.log1p(stats.late_count)
            cols.append(late[safe] / max(late.max(initial=0.0), 1e-6))
            cols.append((stats.late_count[safe] + 1.0) / (stats.popularity[safe] + 3.0))
    if not cols:
        return np.zeros((n, L, 0), np.float32)
    return np.where(valid[..., None], np.stack(cols, -1), 0.0).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


class ListFeaturizer:
    """What candidate features are computed from: item statistics, categories, item vectors and the optional
    groups' tables. Saved with the lists (``save``/``load``) so a re-ranker scores new requests with the tables its
    training lists used."""

    def __init__(self, stats: ItemStats, category: np.ndarray, item_vectors: np.ndarray | None = None,
                 sources: tuple[str, ...] = (), tables: ItemTables | None = None, groups: tuple[str, ...] = ()):
        self.stats, self.category = stats, np.asarray(category, dtype=np.int64)
        self.item_vectors = None if item_vectors is None else np.asarray(item_vectors, dtype=np.float32)
        # normalised once: per request it would cost a pass over the whole catalogue's vectors
        self._unit = None if self.item_vectors is None else unit_rows(self.item_vectors).astype(np.float32)
        self.sources = tuple(sources)
        self.tables = tables or ItemTables()
        unknown = sorted(set(groups) - set(GROUP_NAMES))
        if unknown:
            raise ValueError(f"unknown feature group(s) {unknown}; known: {', '.join(GROUP_NAMES)}")
        self.groups = self.tables.available(tuple(groups))  # a group without its table is left out

    @property
    def n_items(self) -> int:
        return int(self.category.shape[0])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.sources, self.groups)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def features(self, items: np.ndarray, histories: list[np.ndarray], init_scores: np.ndarray | None = None,
                 source_ranks: np.ndarray | None = None, source_scores: np.ndarray | None = None) -> np.ndarray:
        """FEATURES, the groups' columns, then (with sources) each source's SOURCE_FEATURES from its ranks /
        scores ``[n, L, S]``."""
        parts = [build_features(items, histories, self.stats, self.category, init_scores, self._unit, unit_vectors=True)]
        if self.groups:
            parts.append(group_features(items, histories, self.stats, self.tables, self.groups))
        if self.sources:
            if source_ranks is None or source_ranks.shape[-1] != len(self.sources):
                raise ValueError(f"featurizer for sources {list(self.sources)} needs their ranks [n, L, {len(self.sources)}]")
            parts.append(source_features(source_ranks, source_scores, items >= 0))
        return np.concatenate(parts, -1) if len(parts) > 1 else parts[0]

    def lists(self, users: np.ndarray, histories: list[np.ndarray], items: np.ndarray, labels: np.ndarray | None,
              init_scores: np.ndarray | None, history_len: int, source: str, meta: dict[str, Any] | None = None,
              source_ranks: np.ndarray | None = None, source_scores: np.ndarray | None = None) -> RerankLists:
        """Requests (users, histories as item-id arrays, candidates −1 padded) as :class:`RerankLists`."""
        items = np.asarray(items, dtype=np.int64)
        labels = np.zeros(items.shape, np.float32) if labels is None else np.asarray(labels, np.float32)
        meta = {**(meta or {}), **({"sources": list(self.sources)} if self.sources else {}),
                **({"feature_groups": list(self.groups)} if self.groups else {})}
        feats = self.features(items, histories, init_scores, source_ranks, source_scores)
        return RerankLists(np.asarray(users, np.int64), pad_left(histories, history_len), items, labels, feats,
                           self.category, source, meta)

    def save(self, path: str | Path) -> Path:
        arrays = {**self.stats.tables(), "item_category": self.category}
        if self.item_vectors is not None:
            arrays["item_vectors"] = self.item_vectors
        for name in ("sid_codes", "brand", "top_category"):
            if getattr(self.tables, name) is not None:
                arrays[name] = getattr(self.tables, name)
        with atomic_dir(path) as tmp:
            save_file(arrays, str(tmp / "featurizer.safetensors"))
            (tmp / "meta.json").write_text(json.dumps({"features": self.feature_names, "n_items": self.n_items,
                                                       "sources": list(self.sources), "groups": list(self.groups)},
                                                      indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ListFeaturizer:
        path = Path(path)
        info = json.loads((path / "meta.json").read_text())
        sources, groups = tuple(info.get("sources", ())), tuple(info.get("groups", ()))
        if tuple(info.get("features", ())) != feature_names(sources, groups):
            raise ValueError(f"{path}: featurizer for features {info.get('features')}, this version uses "
                             f"{feature_names(sources, groups)}")
        a = load_file(str(path / "featurizer.safetensors"))
        tables = ItemTables(a.get("sid_codes"), a.get("brand"), a.get("top_category"))
        featurizer = cls(ItemStats.from_tables(a), a["item_category"], a.get("item_vectors"), sources, tables, groups)
        if featurizer.groups != groups:
            raise ValueError(f"{path}: feature groups {list(groups)} recorded, tables for {list(featurizer.groups)}")
        return featurizer


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
                      sources: tuple[str, ...] = (), tables: ItemTables | None = None,
                      groups: tuple[str, ...] = ()) -> ListFeaturizer:
    """Funnel-list features: statistics from the split's training sequences only."""
    seqs = [split.train_sequence(u) for u in range(split.n_users)]
    return ListFeaturizer(ItemStats([s for s in seqs if s.size], split.n_items), category, item_vectors, sources,
                          tables, groups)
