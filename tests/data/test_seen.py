"""The seen-item policy (thinkrec.data.seen): repeat share, the auto decision, masks — against plain loops."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrec.data.seen import decide, drop_seen, mask_seen_scores, repeat_share, seen_mask
from thinkrec.data.splits import EvalExamples
from thinkrec.eval.protocol import compute_ranks

sequences = st.lists(st.lists(st.integers(0, 6), min_size=0, max_size=8), min_size=1, max_size=6)


def _csr(seqs):
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    flat = np.array([x for s in seqs for x in s], dtype=np.int64)
    return offsets, flat


@settings(max_examples=200, deadline=None)
@given(sequences)
def test_repeat_share_equals_a_loop_over_next_items(seqs):
    steps = repeats = 0
    for s in seqs:
        for t in range(1, len(s)):
            steps += 1
            repeats += s[t] in s[:t]
    offsets, flat = _csr(seqs)
    assert repeat_share(offsets, flat) == pytest.approx(repeats / steps if steps else 0.0)


def test_auto_excludes_below_the_threshold_and_says_why():
    assert decide("auto", 0.01, 0.05).exclude and "below" in decide("auto", 0.01, 0.05).why
    keep = decide("auto", 0.3, 0.05)
    assert not keep.exclude and "kept" in keep.why and keep.repeat_share == 0.3
    assert decide("exclude", 0.9).exclude and not decide("keep", 0.0).exclude
    with pytest.raises(ValueError, match="seen policy"):
        decide("sometimes", 0.1)


@settings(max_examples=200, deadline=None)
@given(sequences, st.lists(st.lists(st.integers(-1, 6), min_size=4, max_size=4), min_size=1, max_size=6))
def test_seen_mask_and_drop_seen_equal_loops(hists, rows):
    n = min(len(hists), len(rows))
    hists, items = [np.array(h, dtype=np.int64) for h in hists[:n]], np.array(rows[:n], dtype=np.int64)
    want = np.array([[it >= 0 and it in set(h.tolist()) for it in row] for row, h in zip(items, hists, strict=True)])
    assert np.array_equal(seen_mask(items, hists), want)
    scores = np.arange(items.size, dtype=np.float64).reshape(items.shape)
    kept_items, kept_scores = drop_seen(items, scores, hists)
    for b in range(n):
        unseen = [(i, s) for i, s, w in zip(items[b], scores[b], want[b], strict=True) if not w and i >= 0]
        assert kept_items[b][: len(unseen)].tolist() == [i for i, _ in unseen]
        assert kept_scores[b][: len(unseen)].tolist() == [s for _, s in unseen]
        assert set(kept_items[b][len(unseen):].tolist()) <= {-1}


def test_exclusion_in_evaluation_counts_a_repeated_target_as_a_miss():
    # two users over 5 items; user 0's target (item 2) is in its history, user 1's (item 4) is not
    ex = EvalExamples(np.array([0, 1]), np.array([0, 2, 4]), np.array([2, 1, 0, 3]), np.array([2, 4]))
    scores = torch.tensor([[0.0, 5.0, 9.0, 1.0, 2.0], [8.0, 1.0, 2.0, 7.0, 6.0]])
    score_fn = lambda users, tokens: scores[users]  # noqa: E731
    keep = compute_ranks(score_fn, ex, max_len=5)
    excl = compute_ranks(score_fn, ex, max_len=5, exclude_seen=True)
    assert keep.tolist() == [0, 2]  # unmasked: user 1's target is behind items 0 and 3
    assert excl.tolist() == [5, 0]  # excluded: items 0 and 3 are user 1's history, user 0's repeat is a miss
    masked = mask_seen_scores(scores, [np.array([2, 1]), np.array([0, 3])])
    assert torch.isneginf(masked).sum() == 4 and not torch.isneginf(scores).any()
