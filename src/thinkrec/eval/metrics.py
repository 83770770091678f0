"""Ranking metrics — the one place thinkrec computes recall / NDCG / MRR / MAP (eval, retrieval, rerank, llm).

Next-item metrics work from the 0-based rank of the single target item: HR@K = Recall@K = 1[rank < K],
NDCG@K = 1/log2(rank + 2) if rank < K (the ideal DCG of one relevant item is 1), MRR = 1/(rank + 1). A target
that was not retrieved at all has rank ``np.inf`` and scores 0 on every metric. Other conventions convert to these
ranks first: :func:`ranks_from_scores` (scores, pessimistic ties), :func:`ranks_from_positions` (1-based positions,
0 = absent) and :func:`first_hit_ranks` (labels in displayed order).

Labelled-list metrics follow LibRerank's ``evaluate_multi``: for a displayed order with labels y,
NDCG@K = DCG@K / IDCG@K with gain 2^y − 1 and the ideal order = labels sorted descending;
MAP@K = Σ_{i≤K, y_i>0} (#hits in top i / i) / #hits in top K. A list with no positive label scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all items; ties count against the target (pessimistic).

    ``scores``: [B, N]; ``targets``: [B]. Masked items should carry ``-inf``.
    """
    target_scores = scores.gather(1, targets.view(-1, 1))
    # greater + ties other than the target = (≥) − 1: one pass over [B, N], counted in int32 (3.4× faster than
    # the two int64 passes at 1M items); int64 counts beyond int32's range
    dtype = torch.int32 if scores.shape[1] < 2**31 else torch.int64
    return (scores >= target_scores).sum(1, dtype=dtype).long() - 1


def ranks_from_positions(positions: np.ndarray | Sequence[int]) -> np.ndarray:
    """0-based ranks from 1-based positions where 0 means "not in the list" (the LLM stage's answers); an absent
    item gets rank ``np.inf``."""
    p = np.asarray(positions, dtype=np.float64)
    return np.where(p > 0, p - 1.0, np.inf)


def first_hit_ranks(labels_in_order: np.ndarray) -> np.ndarray:
    """0-based rank of the first positive label of each list (``[n, L]``, displayed order); ``np.inf`` when none."""
    hit = np.asarray(labels_in_order) > 0
    return np.where(hit.any(1), hit.argmax(1), np.inf)


def discount(ranks: np.ndarray) -> np.ndarray:
    """DCG position discount 1/log2(rank + 2) of 0-based ranks (0 for ``np.inf``)."""
    return 1.0 / np.log2(np.asarray(ranks, dtype=np.float64) + 2.0)


def rank_metrics(ranks: np.ndarray | torch.Tensor, ks: Sequence[int] = (5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-example next-item metrics from 0-based target ranks (``np.inf`` = not retrieved)."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r < k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, discount(r), 0.0)
    out["mrr"] = 1.0 / (r + 1.0)
    return out


def _list_arrays(labels: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64)
    if order is not None:
        labels = np.take_along_axis(labels, np.asarray(order, dtype=np.int64), axis=1)
    return labels


def list_ndcg(labels_in_order: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-list NDCG@K (gain 2^y − 1). ``labels_in_order``: [n_lists, L] in displayed order; padding = 0."""
    y = np.asarray(labels_in_order, dtype=np.float64)
    if valid is not None:
        y = np.where(valid, y, 0.0)
    kk = min(k, y.shape[1])
    disc = discount(np.arange(kk))
    dcg = ((2.0 ** y[:, :kk] - 1.0) * disc).sum(1)
    ideal = -np.sort(-y, axis=1)[:, :kk]
    idcg = ((2.0**ideal - 1.0) * disc).sum(1)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def list_map(labels_in_order: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-list MAP@K as in LibRerank: mean precision at each hit within the top K, over hits in the top K."""
    y = np.asarray(labels_in_order, dtype=np.float64)
    if valid is not None:
        y = np.where(valid, y, 0.0)
    hits = (y[:, :k] > 0).astype(np.float64)
    cum = np.cumsum(hits, axis=1)
    prec = cum / np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    n_hits = hits.sum(1)
    return np.divide((prec * hits).sum(1), n_hits, out=np.zeros_like(n_hits), where=n_hits > 0)


def list_metrics(
    labels: np.ndarray, order: np.ndarray | None = None, ks: Sequence[int] = (5, 10), valid: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-list MAP@K and NDCG@K of ``labels`` ([n, L], original candidate order) shown in ``order`` ([n, L]
    candidate indices, best first; None = as given). ``valid`` masks padded slots of ragged lists (in
    displayed order)."""
    y = _list_arrays(labels, order)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"map@{k}"] = list_map(y, k, valid)
        out[f"ndcg@{k}"] = list_ndcg(y, k, valid)
    return out


def mean_metrics(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.mean(v)) if len(v) else 0.0 for k, v in per_example.items()}
