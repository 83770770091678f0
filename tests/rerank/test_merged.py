"""Re-ranking over merged candidates: three disjoint validation slices, no test-target leakage into training
lists, and a re-ranker that learns which source carries the signal from the per-source features."""

from __future__ import annotations

import numpy as np
import polars as pl

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import EvalExamples, leave_one_out
from thinkrec.rerank import RerankModelConfig, RerankTrainConfig, order_metrics, rerank_orders, train_reranker
from thinkrec.rerank.lists import (
    FEATURE_GROUPS,
    FEATURES,
    SOURCE_FEATURES,
    ItemStats,
    ListFeaturizer,
    RerankLists,
)
from thinkrec.rerank.stage import RerankStageConfig, merged_sets
from thinkrec.retrieval.candidates import merge_candidates


def _split(seed: int = 0, n_users: int = 120, n_items: int = 60):
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(n_items, rng.integers(5, 9), replace=False) for _ in range(n_users)]
    inter = pl.DataFrame({"user_id": [str(u) for u, s in enumerate(seqs) for _ in s],
                          "item_id": [str(i) for s in seqs for i in s],
                          "ts": [t for s in seqs for t in range(len(s))]})
    return leave_one_out(Dataset.from_frames("toy", inter))


def _history_sources(ex: EvalExamples, n_items: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two honest sources that see only the history: items after the last one, and items by a hash of it."""
    last = np.array([ex.history(i)[-1] for i in range(len(ex))])
    nxt = (last[:, None] + np.arange(1, 9)[None]) % n_items
    hashed = (last[:, None] * 7 + np.arange(8)[None] * 3) % n_items
    scores = -np.tile(np.arange(8.0), (len(ex), 1)).astype(np.float32)
    return {"next": (nxt, scores), "hash": (hashed, scores)}


def _sets(split, cfg):
    cands = {}
    for part in ("valid", "test"):
        ex = getattr(split, part)
        per = _history_sources(ex, split.n_items)
        cands[part] = merge_candidates(per, 10).with_targets(per, ex.targets)
    return merged_sets(split, cands["valid"], cands["test"], np.zeros(split.n_items, np.int64), cfg, seed=3)


def test_three_disjoint_validation_slices_and_source_features():
    split = _split()
    train, hold, compare, test, featurizer = _sets(split, RerankStageConfig(holdout_frac=0.2, compare_frac=0.25))
    users = [set(x.users.tolist()) for x in (train, hold, compare)]
    assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
    assert sum(map(len, users)) == len(split.valid) and len(test) == len(split.test)
    # no SID codes or brands in this fixture: of the default groups only cooc and trend can be computed
    assert train.groups == ("cooc", "trend") and train.sources == ("next", "hash")
    extra = len(FEATURE_GROUPS["cooc"]) + len(FEATURE_GROUPS["trend"])
    assert train.n_features == len(FEATURES) + extra + 2 * len(SOURCE_FEATURES)
    # the comparison slice keeps its rows into the validation examples (single sources are scored there)
    assert np.array_equal(split.valid.users[compare.meta["rows"]], compare.users)
    # recip-rank feature of source "next": 1 / (1 + its rank) where it returned the item, else 0 with the flag
    col = train.feature_names.index("next:recip_rank")
    items = train.items[0]
    nxt = (split.valid.history(np.searchsorted(split.valid.users, train.users[0]))[-1] + np.arange(1, 9)) % split.n_items
    for j, it in enumerate(items):
        r = np.nonzero(nxt == it)[0]
        want = 1.0 / (1 + r[0]) if len(r) else 0.0
        assert np.isclose(train.features[0, j, col], want) and train.features[0, j, col + 2] == (0.0 if len(r) else 1.0)


def test_no_training_list_holds_any_test_target_information():
    split = _split()
    cfg = RerankStageConfig(holdout_frac=0.2, compare_frac=0.2)
    a = _sets(split, cfg)
    # same data, every test target replaced: the training, hold-out and comparison lists must not change at all
    rng = np.random.default_rng(9)
    split.test.targets[:] = rng.integers(0, split.n_items, len(split.test))
    b = _sets(split, cfg)
    for x, y in zip(a[:3], b[:3], strict=True):
        for field in ("users", "history", "items", "labels", "features"):
            assert np.array_equal(getattr(x, field), getattr(y, field)), field
    assert not np.array_equal(a[3].labels, b[3].labels)  # the test lists did see the new targets


def test_reranker_learns_which_source_carries_the_signal():
    """Source "good" puts the true item at its rank 0 in 70 % of lists; source "noise" never ranks it first. The
    interleave puts noise's first item on top, so the merge order has the target at position 1 or 2; a re-ranker
    that reads the per-source ranks learns to lift good's first item to the top."""
    rng = np.random.default_rng(0)
    n, n_items = 3000, 200
    target = rng.integers(0, n_items, n)
    good = np.stack([rng.choice(n_items, 8, replace=False) for _ in range(n)])
    hit = rng.random(n) < 0.7
    good[hit, 0] = target[hit]
    good[hit, 1:] = np.where(good[hit, 1:] == target[hit, None], (target[hit, None] + 1) % n_items, good[hit, 1:])
    noise = np.stack([rng.choice(n_items, 8, replace=False) for _ in range(n)])
    noise[:, 0] = np.where(noise[:, 0] == target, (target + 2) % n_items, noise[:, 0])
    scores = -np.tile(np.arange(8.0), (n, 1)).astype(np.float32)
    merged = merge_candidates({"noise": (noise, scores), "good": (good, scores)}, 10)
    featurizer = ListFeaturizer(ItemStats([], n_items), np.zeros(n_items, np.int64), None, ("noise", "good"))
    labels = (merged.items == target[:, None]).astype(np.float32)
    lists = featurizer.lists(np.arange(n), [np.array([0])] * n, merged.items, labels, None, 4, "funnel",
                             source_ranks=merged.ranks, source_scores=merged.scores)
    train, valid, test = (lists.subset(np.arange(a, b)) for a, b in ((0, 2000), (2000, 2400), (2400, n)))
    cfg = RerankTrainConfig(epochs=6, seed=0, batch_size=128)
    model, _ = train_reranker("dnn", train, valid, RerankModelConfig(d_model=16, dropout=0.0), cfg)
    got = order_metrics(test, rerank_orders(model, test))["ndcg@5"].mean()
    initial = order_metrics(test, rerank_orders(None, test))["ndcg@5"].mean()
    good_first = 0.7  # the ideal: good's first item on top whenever it is the target
    assert got > initial + 0.15 and got > good_first - 0.05, (got, initial)
    assert isinstance(test, RerankLists) and test.n_features == len(FEATURES) + 6
