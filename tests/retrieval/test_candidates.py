"""Merged candidates: no duplicates, every source's top ⌊K / sources⌋ always in, ranks and scores per source."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrec.retrieval.candidates import CandidateSet, merge_candidates


def _source(rng: np.random.Generator, n: int, k: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    items = np.stack([rng.choice(n_items, k, replace=False) for _ in range(n)])
    short = rng.random(n) < 0.3  # some requests get fewer items (a beam that ran out): −1 padded
    items[short, k // 2:] = -1
    return items, -np.sort(rng.random((n, k)), 1).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_sources=st.integers(1, 5), k=st.integers(4, 40), n_items=st.integers(40, 80))
def test_default_rule_no_duplicates_and_every_sources_top_in(seed, n_sources, k, n_items):
    rng = np.random.default_rng(seed)
    per = {f"s{i}": _source(rng, 12, int(rng.integers(3, 30)), n_items) for i in range(n_sources)}
    merged = merge_candidates(per, k)
    quota = k // n_sources
    for r in range(12):
        row = merged.items[r][merged.items[r] >= 0]
        assert len(row) == len(set(row.tolist()))  # no duplicates
        union = set().union(*(set(v[0][r][v[0][r] >= 0].tolist()) for v in per.values()))
        assert len(row) == min(k, len(union)) and set(row.tolist()) <= union
        for name, (items, _) in per.items():
            top = items[r][:quota]
            assert set(top[top >= 0].tolist()) <= set(row.tolist()), name
        # padding only at the end
        assert (np.diff((merged.items[r] < 0).astype(int)) >= 0).all()


def test_interleave_order_ranks_scores_and_quotas():
    a = (np.array([[1, 2, 3, 4]]), np.array([[9.0, 8, 7, 6]], np.float32))
    b = (np.array([[2, 5, 6, -1]]), np.array([[0.5, 0.4, 0.3, 0]], np.float32))
    m = merge_candidates({"a": a, "b": b}, 5)
    assert m.items.tolist() == [[1, 2, 5, 3, 6]]  # a's 1, b's 2 (a's 2 skipped as a duplicate), b's 5, a's 3, b's 6
    # item 2: rank 1 in a, rank 0 in b; item 6 only in b
    assert m.ranks[0, 1].tolist() == [1, 0] and m.ranks[0, 4].tolist() == [-1, 2]
    assert np.allclose(m.scores[0, 1], [8.0, 0.5]) and np.allclose(m.scores[0, 4], [0.0, 0.3])
    # quotas: a weighs 3, b 1 → a's top 3 come before b's second item
    q = merge_candidates({"a": a, "b": b}, 4, {"a": 3, "b": 1})
    assert q.items.tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="quotas"):
        merge_candidates({"a": a}, 3, {"c": 1})


def test_target_ranks_recall_and_roundtrip(tmp_path):
    a = (np.array([[1, 2, 3], [4, 5, 6]]), np.zeros((2, 3), np.float32))
    b = (np.array([[7, 8, 9], [5, 4, 1]]), np.zeros((2, 3), np.float32))
    targets = np.array([9, 4])
    m = merge_candidates({"a": a, "b": b}, 4).with_targets({"a": a, "b": b}, targets)
    assert m.target_ranks.tolist() == [[-1, 2], [0, 1]]
    assert m.recall(targets) == 0.5 and m.recall(targets, 1) == 0.5  # 9 is cut at K = 4; 4 is first
    again = CandidateSet.load(m.save(tmp_path / "c"))
    assert np.array_equal(again.items, m.items) and np.array_equal(again.target_ranks, m.target_ranks)
    assert again.sources == ("a", "b")


def test_fallback_source_only_fills_what_the_others_leave():
    from thinkrec.retrieval.candidates import CandidateConfig

    a = (np.array([[1, 2, -1, -1], [1, 2, 3, 4]]), np.zeros((2, 4), np.float32))
    pop = (np.array([[9, 1, 8, 7], [9, 8, 7, 6]]), np.zeros((2, 4), np.float32))
    quotas = CandidateConfig().quotas_for(["a", "popularity"])
    assert quotas == {"a": 1.0, "popularity": 0.0}
    m = merge_candidates({"a": a, "popularity": pop}, 4, quotas)
    assert m.items.tolist() == [[1, 2, 9, 8], [1, 2, 3, 4]]  # row 1: a fills K, popularity never enters
    with pytest.raises(ValueError, match="fallback"):
        CandidateConfig().quotas_for(["popularity"])
