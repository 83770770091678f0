"""SIDMap (bijection, both collision strategies, persistence) and SIDTrie (exact masks, speed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.tokenize.sids import SIDMap, SIDTrie, last_level_distances


def skewed_codes(n: int, k: int, levels: int, seed: int = 0, a: float = 1.5) -> np.ndarray:
    """Zipf-like codes so that many items collide on a few tuples."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** a
    p /= p.sum()
    return rng.choice(k, size=(n, levels), p=p)


def assert_bijection(sm: SIDMap) -> None:
    items = np.arange(sm.n_items)
    sids = sm.item_to_sid(items)
    assert sids.shape == (sm.n_items, sm.sid_length)
    assert np.unique(sids, axis=0).shape[0] == sm.n_items  # no two items share a SID
    assert ((sids >= 0) & (sids < np.asarray(sm.radix))).all()
    np.testing.assert_array_equal(sm.sid_to_item(sids), items)  # exact round trip for every item


@pytest.mark.parametrize("strategy", ["dedup", "reassign"])
def test_round_trip_with_heavy_collisions(strategy: str) -> None:
    raw = skewed_codes(400, 8, 3, seed=1)
    sm = SIDMap(raw, 8, strategy=strategy)
    assert sm.unique_before_dedup < 0.5 and sm.max_items_per_tuple > 10  # the case really is heavy
    assert_bijection(sm)
    if strategy == "dedup":
        assert sm.sid_length == 4 and sm.radix == [8, 8, 8, sm.max_items_per_tuple]
        np.testing.assert_array_equal(sm.codes[:, :3], raw)
    else:
        assert sm.sid_length == 3 and sm.radix == [8, 8, 8]
        kept = ~sm.reassigned
        np.testing.assert_array_equal(sm.codes[kept], raw[kept])
        assert sm.n_reassigned == sm.n_items - sm.n_unique_tuples


def test_dedup_digits_count_up_within_each_tuple() -> None:
    raw = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 0], [3, 3]])
    sm = SIDMap(raw, 4, strategy="dedup")
    np.testing.assert_array_equal(sm.codes[:, 2], [0, 0, 1, 2, 1, 0])
    assert sm.max_items_per_tuple == 3 and sm.radix[-1] == 3
    assert sm.unique_before_dedup == pytest.approx(3 / 6)
    no_collision = SIDMap(np.array([[0, 1], [1, 0]]), 2)
    assert no_collision.radix == [2, 2, 1] and (no_collision.codes[:, 2] == 0).all()


def test_reassign_uses_distances() -> None:
    raw = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    dist = np.array(
        [
            [5.0, 0.5, 9.0, 0.2],  # item 0 is farther from code 1 than item 1 → moves; nearest free is 3
            [9.0, 0.1, 9.0, 9.0],  # closest to code 1 → keeps it
            [0.3, 0.9, 0.1, 0.4],  # moves to code 2
            [0.0, 9.0, 9.0, 9.0],
        ]
    )
    sm = SIDMap(raw, 4, strategy="reassign", last_level_dist=dist)
    np.testing.assert_array_equal(sm.codes, [[0, 3], [0, 1], [0, 2], [1, 0]])
    np.testing.assert_array_equal(sm.reassigned, [True, False, True, False])
    without = SIDMap(raw, 4, strategy="reassign")  # first item keeps, the others take the lowest free codes
    np.testing.assert_array_equal(without.codes, [[0, 1], [0, 0], [0, 2], [1, 0]])


def test_reassign_falls_back_to_deeper_prefixes_when_a_prefix_is_full() -> None:
    raw = np.zeros((20, 3), dtype=np.int64)  # 20 items on one tuple; a last-level prefix holds only 4
    sm = SIDMap(raw, 4, strategy="reassign")
    assert_bijection(sm)
    # The block c1 = 0 holds 16 SIDs; the other 4 spill into the nearest block, c1 = 1.
    assert (sm.codes[:, 0] == 0).sum() == 16 and (sm.codes[:, 0] == 1).sum() == 4
    sm2 = SIDMap(np.zeros((40, 3), dtype=np.int64), 4, strategy="reassign")
    assert_bijection(sm2)
    assert np.bincount(sm2.codes[:, 0]).tolist() == [16, 16, 8]
    with pytest.raises(ValueError, match="do not fit"):
        SIDMap(np.zeros((65, 3), dtype=np.int64), 4, strategy="reassign")


def test_invalid_sids_map_to_minus_one() -> None:
    sm = SIDMap(np.array([[0, 1], [2, 3]]), 4, strategy="reassign")
    queries = np.array([[0, 1], [2, 3], [1, 1], [-1, 1], [0, 4], [4, 0], [99, 99]])
    np.testing.assert_array_equal(sm.sid_to_item(queries), [0, 1, -1, -1, -1, -1, -1])
    assert sm.sid_to_item(np.array([2, 3])) == 1
    with pytest.raises(ValueError, match="shape"):
        sm.sid_to_item(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(IndexError):
        sm.item_to_sid([2])


def test_torch_in_torch_out() -> None:
    sm = SIDMap(skewed_codes(50, 4, 3), 4)
    sids = sm.item_to_sid(torch.arange(50))
    assert isinstance(sids, torch.Tensor) and sids.shape == (50, 4)
    back = sm.sid_to_item(sids)
    assert isinstance(back, torch.Tensor)
    assert torch.equal(back, torch.arange(50))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="out of range"):
        SIDMap(np.array([[0, 4]]), 4)
    with pytest.raises(ValueError, match="strategy"):
        SIDMap(np.array([[0, 1]]), 4, strategy="nope")
    with pytest.raises(ValueError, match="last_level_dist"):
        SIDMap(np.array([[0, 1], [0, 1]]), 4, strategy="reassign", last_level_dist=np.zeros((2, 3)))
    assert SIDMap(np.array([[0, 5], [2, 1]])).codebook_size == [3, 6]  # inferred


@pytest.mark.parametrize("strategy", ["dedup", "reassign"])
def test_save_load(tmp_path: Path, strategy: str) -> None:
    raw = skewed_codes(200, 8, 3, seed=2)
    dist = np.random.default_rng(0).random((200, 8))
    sm = SIDMap(raw, 8, strategy=strategy, last_level_dist=dist)
    sm.save(tmp_path / "sids")
    back = SIDMap.load(tmp_path / "sids")
    np.testing.assert_array_equal(back.codes, sm.codes)
    np.testing.assert_array_equal(back.raw_codes, raw)
    assert back.summary() == sm.summary()
    assert_bijection(back)


def test_sid_strings_round_trip() -> None:
    sm = SIDMap(skewed_codes(30, 4, 3), 4)
    strings = sm.sid_strings(np.arange(30))
    assert strings[0].startswith("<|sid_begin|><s_a_") and strings[0].endswith("<|sid_end|>")
    np.testing.assert_array_equal(sm.parse_sid_strings(strings), np.arange(30))
    text = "I recommend " + sm.sid_strings([7], wrap=False)[0] + " because"
    assert sm.parse_sid_strings([text, "<s_b_1><s_a_1>", ""]).tolist() == [7, -1, -1]
    assert len(sm.vocab_tokens()) == sum(sm.radix)


def test_last_level_distances() -> None:
    r = np.array([[0.0, 0.0], [1.0, 1.0]])
    c = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(last_level_distances(r, c), [[0, 1, 2], [2, 1, 0]], atol=1e-6)


# ------------------------------------------------------------------------------------------------ trie
def _prefix_sets(codes: np.ndarray) -> list[set[tuple[int, ...]]]:
    return [{tuple(row[:t]) for row in codes.tolist()} for t in range(codes.shape[1] + 1)]


@pytest.mark.parametrize("strategy", ["dedup", "reassign"])
def test_trie_masks_equal_brute_force(strategy: str) -> None:
    rng = np.random.default_rng(3)
    sm = SIDMap(skewed_codes(300, 8, 3, seed=4), 8, strategy=strategy)
    trie = sm.trie()
    sets = _prefix_sets(sm.codes)
    for t in range(trie.depth):
        real = sm.codes[rng.integers(0, sm.n_items, 200), :t]
        noise = rng.integers(-1, max(sm.radix) + 2, size=(200, t))  # includes out-of-range codes
        prefixes = np.concatenate([real, noise])
        mask = trie.allowed_next(prefixes).numpy()
        assert mask.shape == (400, sm.radix[t])
        expected = np.array(
            [[(*map(int, p), c) in sets[t + 1] for c in range(sm.radix[t])] for p in prefixes]
        )
        np.testing.assert_array_equal(mask, expected)
        valid_prefix = trie.is_valid_prefix(prefixes).numpy()
        np.testing.assert_array_equal(valid_prefix, [tuple(map(int, p)) in sets[t] for p in prefixes])
    full = np.concatenate([sm.codes, rng.integers(0, max(sm.radix), size=(300, trie.depth))])
    np.testing.assert_array_equal(trie.is_valid(full).numpy(), [tuple(map(int, r)) in sets[-1] for r in full])


@pytest.mark.parametrize("strategy", ["dedup", "reassign"])
def test_every_sid_reachable_and_random_walks_end_on_items(strategy: str) -> None:
    sm = SIDMap(skewed_codes(500, 8, 3, seed=5), 8, strategy=strategy)
    trie = SIDTrie.from_sidmap(sm)
    codes = torch.from_numpy(sm.codes)
    for t in range(trie.depth):  # each step of each item's own SID is allowed
        mask = trie.allowed_next(codes[:, :t])
        assert mask[torch.arange(sm.n_items), codes[:, t]].all()

    gen = torch.Generator().manual_seed(0)
    walk = torch.zeros(2000, 0, dtype=torch.int64)
    for _ in range(trie.depth):  # pick a uniformly random allowed child at each step
        mask = trie.allowed_next(walk)
        assert mask.any(1).all()  # a valid prefix is never a dead end
        choice = torch.multinomial(mask.float(), 1, generator=gen)
        walk = torch.cat([walk, choice], 1)
    assert trie.is_valid(walk).all()
    assert (sm.sid_to_item(walk) >= 0).all()


def test_mask_logits_and_errors() -> None:
    sm = SIDMap(np.array([[0, 1], [0, 2], [3, 0]]), 4, strategy="reassign")
    trie = sm.trie()
    out = trie.mask_logits(torch.zeros(2, 4), torch.tensor([[0], [1]]))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert torch.isinf(out[1]).all()  # an invalid prefix allows nothing
    assert trie.allowed_next(torch.zeros(3, 0, dtype=torch.int64)).tolist() == [[True, False, False, True]] * 3
    with pytest.raises(ValueError, match="no next level"):
        trie.allowed_next(torch.zeros(1, 2, dtype=torch.int64))


def test_trie_mask_speed() -> None:
    """20 beams × 1000 users, every level of a Beauty-sized dedup trie (4 levels)."""
    sm = SIDMap(skewed_codes(12101, 256, 3, seed=6, a=0.7), 256)
    trie = sm.trie()
    rng = np.random.default_rng(0)
    beams = torch.from_numpy(sm.codes[rng.integers(0, sm.n_items, 20 * 1000)])
    trie.allowed_next(beams[:10, :1])  # warm-up
    t0 = time.perf_counter()
    for t in range(trie.depth):
        mask = trie.allowed_next(beams[:, :t])
        assert mask.shape == (20000, sm.radix[t])
    elapsed = time.perf_counter() - t0
    print(f"trie masks: 20000 beams x {trie.depth} levels in {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0  # generous: measured in the tens of milliseconds on a busy 2-core machine
