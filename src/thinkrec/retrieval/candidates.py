"""Candidate generation from several sources, merged into one set of K items per request.

Each source (SASRec, a generative retriever's re-scored beams, item-to-item co-occurrence, popularity) returns
its own top-k with scores. :func:`merge_candidates` merges them by an explicit rule: every source's r-th item
gets the key ``(r + 1) / quota``; items are taken in key order (ties: the sources' listed order), duplicates
skipped, until K. With equal quotas this is a plain interleave by rank, so every source's top ⌊K / sources⌋ is
always in; quotas ``{name: q}`` with Σq = K guarantee source ``name`` its top q. Quota 0 makes a source a
*fallback*: its items only fill what the others leave empty (the default for popularity, which on Beauty finds
the target for 0.2 % of users at 50 and would otherwise take a quarter of the slots).
For each merged item the set keeps every source's rank and score (rank −1: that source did not return it), which
the re-rankers see as features.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from thinkrec.baselines.cooccurrence import CooccurrenceConfig
from thinkrec.baselines.ease import EASEConfig
from thinkrec.data.batching import pad_histories
from thinkrec.data.seen import drop_seen, mask_seen_scores, seen_mask
from thinkrec.data.splits import EvalExamples
from thinkrec.utils.config import check_valid, spec
from thinkrec.utils.io import atomic_dir


def _scorer_names() -> tuple[str, ...]:
    from thinkrec.pipeline.scorers import SCORERS

    return SCORERS.names()


@dataclass
class CandidateConfig:
    # None: every trained scorer (SASRec, the retrievers, cooc, popularity); [] = off
    sources: list[str] | None = spec(None, choices=_scorer_names)
    k: int = spec(50, ge=1, le=1000)  # merged set size (10–200)
    per_source: int = spec(0, ge=0)  # how many each source returns (0 = k)
    # source → weight in the interleave (None: equal; 0 = fallback only)
    quotas: dict[str, float] | None = spec(None, ge=0.0)
    # sources with quota 0 unless quotas say
    fallback: list[str] = spec(default_factory=lambda: ["popularity"], choices=_scorer_names)
    cooc: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)  # the co-occurrence source
    ease: EASEConfig = field(default_factory=EASEConfig)  # the EASE source (when listed in sources)

    def check(self) -> None:
        """Every range error at once, as a :class:`~thinkrec.utils.config.ConfigError` naming ``candidates.<field>``."""
        check_valid(self, "candidates")

    def quotas_for(self, sources: list[str]) -> dict[str, float]:
        """Every source's interleave weight: ``quotas``, else 0 for the ``fallback`` sources and 1 for the rest."""
        out = {s: 0.0 if s in self.fallback else 1.0 for s in sources}
        out.update({s: float(q) for s, q in (self.quotas or {}).items() if s in out})
        if sources and not any(out.values()):
            raise ValueError(f"candidates: every source of {sources} is a fallback (quota 0); at least one needs a quota")
        return out


@dataclass
class CandidateSet:
    """Merged candidates: ``items`` [n, K] (−1 padding, merge order), ``ranks`` / ``scores`` [n, K, S] per source."""

    items: np.ndarray
    ranks: np.ndarray
    scores: np.ndarray
    sources: tuple[str, ...]
    target_ranks: np.ndarray | None = None  # [n, S] each source's 0-based rank of the true target (−1 = absent)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    def hits(self, targets: np.ndarray) -> np.ndarray:
        """[n, K] True where the merged item is the request's target."""
        return (self.items == np.asarray(targets)[:, None]) & (self.items >= 0)

    def recall(self, targets: np.ndarray, k: int | None = None) -> float:
        """Share of requests whose target is among the first ``k`` merged items (all by default)."""
        return float(self.hits(targets)[:, : k or self.k].any(1).mean())

    def source_recall(self, targets: np.ndarray) -> dict[str, float]:
        """Per source: share of requests whose target that source returned (at any of its ranks)."""
        hit = self.hits(targets)
        return {s: float((hit & (self.ranks[..., i] >= 0)).any(1).mean()) for i, s in enumerate(self.sources)}

    def subset(self, idx: np.ndarray) -> CandidateSet:
        tr = None if self.target_ranks is None else self.target_ranks[idx]
        return CandidateSet(self.items[idx], self.ranks[idx], self.scores[idx], self.sources, tr)

    def with_targets(self, per_source: Mapping[str, tuple[np.ndarray, np.ndarray]], targets: np.ndarray) -> CandidateSet:
        """The set with each source's rank of the true target (from the sources' own lists, before merging)."""
        cols = []
        for s in self.sources:
            it = np.asarray(per_source[s][0])
            hit = (it == np.asarray(targets)[:, None]) & (it >= 0)
            cols.append(np.where(hit.any(1), hit.argmax(1), -1))
        return CandidateSet(self.items, self.ranks, self.scores, self.sources, np.stack(cols, 1).astype(np.int32))

    def save(self, path: str | Path) -> Path:
        arrays = {"items": self.items, "ranks": self.ranks, "scores": self.scores}
        if self.target_ranks is not None:
            arrays["target_ranks"] = self.target_ranks
        with atomic_dir(path) as tmp:
            save_file(arrays, str(tmp / "candidates.safetensors"))
            (tmp / "meta.json").write_text(json.dumps({"sources": list(self.sources)}, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CandidateSet:
        path = Path(path)
        a = load_file(str(path / "candidates.safetensors"))
        sources = tuple(json.loads((path / "meta.json").read_text())["sources"])
        if a["ranks"].shape[-1] != len(sources):
            raise ValueError(f"{path}: ranks for {a['ranks'].shape[-1]} sources, meta names {len(sources)}")
        return cls(a["items"], a["ranks"], a["scores"], sources, a.get("target_ranks"))


def merge_candidates(per_source: Mapping[str, tuple[np.ndarray, np.ndarray]], k: int,
                     quotas: Mapping[str, float] | None = None) -> CandidateSet:
    """Merge ``{source: (items [n, k_s] −1 padded, scores [n, k_s])}`` (each in its own rank order) into K items.

    Vectorised over requests: keys ``(rank + 1) / quota`` sorted per row, first occurrences kept, first K taken.
    """
    names = tuple(per_source)
    if not names:
        raise ValueError("merge_candidates: no sources")
    n = {v[0].shape[0] for v in per_source.values()}
    if len(n) != 1:
        raise ValueError(f"merge_candidates: sources disagree on the number of requests: {sorted(n)}")
    unknown = set(quotas or {}) - set(names)
    if unknown:
        raise ValueError(f"candidates.quotas: {sorted(unknown)} are not among the sources {list(names)}")
    items = np.concatenate([np.asarray(per_source[s][0], np.int64) for s in names], 1)  # [n, T]
    src = np.concatenate([np.full(per_source[s][0].shape[1], i) for i, s in enumerate(names)])
    rank = np.concatenate([np.arange(per_source[s][0].shape[1]) for s in names])
    quota = np.array([float((quotas or {}).get(s, 1.0)) for s in names])
    # ties go to the earlier-listed source; quota 0 (fallback): after every other source's items, by rank
    key = np.where(quota[src] > 0, (rank + 1) / np.where(quota[src] > 0, quota[src], 1.0), 1e12 + rank) + src * 1e-9
    order = np.argsort(key, kind="stable")
    cand = items[:, order]  # [n, T] in merge order
    # First occurrence of each item in a row: stable sort by item id keeps merge order among equal ids.
    by_item = np.argsort(cand, axis=1, kind="stable")
    sorted_items = np.take_along_axis(cand, by_item, 1)
    dup_sorted = np.zeros(cand.shape, bool)
    dup_sorted[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    dup = np.zeros(cand.shape, bool)
    np.put_along_axis(dup, by_item, dup_sorted, 1)
    keep = (cand >= 0) & ~dup
    # Compact the kept items to the front (stable: merge order) and cut at K.
    front = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    merged = np.where(np.take_along_axis(keep, front, 1), np.take_along_axis(cand, front, 1), -1)
    if merged.shape[1] < k:
        merged = np.concatenate([merged, np.full((merged.shape[0], k - merged.shape[1]), -1, np.int64)], 1)
    # Every source's rank and score of each merged item.
    ranks = np.full((*merged.shape, len(names)), -1, np.int32)
    out_scores = np.zeros((*merged.shape, len(names)), np.float32)
    for i, s in enumerate(names):
        s_items, s_scores = np.asarray(per_source[s][0], np.int64), np.asarray(per_source[s][1], np.float32)
        for lo in range(0, merged.shape[0], 4096):  # [rows, K, k_s] comparisons, chunked
            m, si = merged[lo: lo + 4096], s_items[lo: lo + 4096]
            eq = (m[:, :, None] == si[:, None, :]) & (m[:, :, None] >= 0)
            found = eq.any(2)
            pos = eq.argmax(2)
            ranks[lo: lo + 4096, :, i] = np.where(found, pos, -1)
            out_scores[lo: lo + 4096, :, i] = np.where(found, np.take_along_axis(s_scores[lo: lo + 4096], pos, 1), 0.0)
    return CandidateSet(merged, ranks, out_scores, names)


TopK = Callable[[EvalExamples], tuple[np.ndarray, np.ndarray]]

#: the score of an empty slot (no item): finite, so that features and merges never see an inf
NO_SCORE = -1e9


def source_top_k(scorer: Any, histories: list[np.ndarray], k: int, max_len: int = 50, exclude_seen: bool = False,
                 device: str = "cpu", users: np.ndarray | None = None, return_thoughts: bool = False,
                 ) -> tuple[np.ndarray, np.ndarray, Any]:
    """One source's top-``k`` for dense-id histories — the one function the candidate stage, the re-ranking
    lists and the served funnel all call, so the pipeline's lists and the served ones are the same.

    Returns items ``[B, k]`` (−1 where fewer), scores (:data:`NO_SCORE` there) and, for a generative scorer, its
    :class:`~thinkrec.retrieval.inference.Recommendation` re-indexed to the kept beams (explanations), else None.
    A generative scorer searches its whole beam (at least ``k``); ``exclude_seen`` drops the history's items from
    it before the cut, so as many of the ``k`` slots as the beam allows are filled. A full-ranking scorer masks the
    history (``−inf``) and takes its top-``k``; a masked item is never a candidate, even when the catalogue runs out.
    ``users``: dense user ids for the scorer (−1: a history given directly; default all −1)."""
    b = len(histories)
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int64)
    flat = np.concatenate(histories).astype(np.int64) if b else np.zeros(0, np.int64)
    tokens = torch.from_numpy(pad_histories(offsets, flat, np.arange(b), max_len)).to(device)
    rec = None
    with torch.inference_mode():
        if hasattr(scorer, "recommend"):
            thoughts = return_thoughts and bool(getattr(getattr(scorer, "model", None), "thinking", False))
            rec = scorer.recommend(tokens, max(int(scorer.beam_size), k), return_thoughts=thoughts)
            items, scores = np.asarray(rec.items).copy(), np.asarray(rec.scores, np.float32).copy()
            if exclude_seen:
                keep = np.argsort(seen_mask(items, histories) | (items < 0), axis=1, kind="stable")
                items, scores = drop_seen(items, scores, histories)  # the same order as ``keep``
                rec = replace(rec, beam_index=np.take_along_axis(rec.beam_index, keep, 1))
        else:
            user_ids = np.full(b, -1, np.int64) if users is None else np.asarray(users, np.int64)
            s = scorer.score(torch.from_numpy(user_ids).to(device), tokens).float()
            if exclude_seen:
                s = mask_seen_scores(s, histories)
            top = s.topk(min(k, s.shape[1]), dim=1)
            scores = top.values.cpu().numpy()
            items = np.where(np.isfinite(scores), top.indices.cpu().numpy(), -1)
    out_items, out_scores = np.full((b, k), -1, np.int64), np.full((b, k), NO_SCORE, np.float32)
    n = min(k, items.shape[1])
    out_items[:, :n] = items[:, :n]
    out_scores[:, :n] = np.where(items[:, :n] >= 0, np.nan_to_num(scores[:, :n], neginf=NO_SCORE), NO_SCORE)
    return out_items, out_scores, rec


def scorer_top_k(scorer: Any, k: int, max_len: int = 50, batch_size: int = 256, exclude_seen: bool = False,
                 device: str = "cpu") -> TopK:
    """:func:`source_top_k` over evaluation examples, in batches: ``examples → (items, scores)``."""

    def top_k(examples: EvalExamples) -> tuple[np.ndarray, np.ndarray]:
        items, scores = np.full((len(examples), k), -1, np.int64), np.full((len(examples), k), NO_SCORE, np.float32)
        for lo in range(0, len(examples), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(examples)))
            items[rows], scores[rows], _ = source_top_k(scorer, [examples.history(i) for i in rows], k, max_len,
                                                        exclude_seen, device, examples.users[rows])
        return items, scores

    return top_k
