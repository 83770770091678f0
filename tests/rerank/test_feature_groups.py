"""The optional candidate-feature groups (cooc, sid, brand, trend) against plain-loop computations."""

import numpy as np
import pytest

from thinkrec.rerank.lists import (
    FEATURE_GROUPS,
    FEATURES,
    GROUP_NAMES,
    ItemStats,
    ItemTables,
    ListFeaturizer,
    RerankLists,
    group_columns,
)

N_ITEMS = 30


def _world(seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, N_ITEMS, rng.integers(1, 12)) for _ in range(60)]
    codes = rng.integers(0, 3, (N_ITEMS, 3))  # few codes per level: prefixes are shared often
    brand = rng.integers(0, 4, N_ITEMS)  # 0 = unknown
    top = rng.integers(0, 3, N_ITEMS)
    hists = [rng.integers(0, N_ITEMS, rng.integers(0, 14)) for _ in range(25)]
    items = rng.integers(-1, N_ITEMS, (25, 7))
    feat = ListFeaturizer(ItemStats(seqs, N_ITEMS), rng.integers(0, 3, N_ITEMS), None, (),
                          ItemTables(codes, brand, top), GROUP_NAMES)
    return seqs, codes, brand, top, hists, items, feat


def _col(feat, name):
    return feat.feature_names.index(name)


def _pair_counts(seqs, window, directed):
    counts = {}
    for s in seqs:
        for i in range(len(s)):
            for j in range(i + 1, min(len(s), i + window + 1)):
                counts[(s[i], s[j])] = counts.get((s[i], s[j]), 0) + 1
                if not directed:
                    counts[(s[j], s[i])] = counts.get((s[j], s[i]), 0) + 1
    return counts


def test_every_group_equals_a_loop():
    seqs, codes, brand, top, hists, items, feat = _world()
    f = feat.features(items, hists)
    assert f.shape == (25, 7, len(FEATURES) + sum(len(v) for v in FEATURE_GROUPS.values()))
    trans, cooc = _pair_counts(seqs, 1, True), _pair_counts(seqs, 3, False)
    out = {a: sum(c for (x, _), c in trans.items() if x == a) for a in range(N_ITEMS)}
    late = np.zeros(N_ITEMS)
    for s in seqs:
        for x in s[-3:]:
            late[x] += 1
    pop = np.bincount(np.concatenate(seqs), minlength=N_ITEMS)
    for b, (h, row) in enumerate(zip(hists, items, strict=True)):
        h = list(h)
        recent = h[-10:]
        for j, c in enumerate(row):
            got = {n: f[b, j, _col(feat, n)] for g in GROUP_NAMES for n in FEATURE_GROUPS[g]}
            if c < 0:  # padding: every column 0
                assert not any(got.values())
                continue
            want = {}
            for back, name in ((2, "log_transition_2"), (3, "log_transition_3")):
                want[name] = np.log1p(trans.get((h[-back], c), 0)) if len(h) >= back else 0.0
            want["log_cooc_recent"] = sum(np.log1p(cooc.get((x, c), 0)) for x in h[-3:])
            want["transition_prob"] = trans.get((h[-1], c), 0) / max(out[h[-1]], 1) if h else 0.0

            def prefix(a, x):
                n = 0
                while n < 3 and codes[a, n] == codes[x, n]:
                    n += 1
                return n

            for back in (1, 2, 3):
                want[f"sid_prefix_{back}"] = prefix(c, h[-back]) / 3 if len(h) >= back else 0.0
            want["sid_prefix_max"] = max((prefix(c, x) for x in recent), default=0) / 3
            want["sid_prefix_share"] = sum(prefix(c, x) >= 1 for x in recent) / max(len(recent), 1)
            want["same_brand_last"] = float(bool(h) and brand[c] > 0 and brand[h[-1]] == brand[c])
            want["brand_share_hist"] = sum(brand[c] > 0 and brand[x] == brand[c] for x in recent) / max(len(recent), 1)
            want["top_cat_share_hist"] = sum(top[c] > 0 and top[x] == top[c] for x in recent) / max(len(recent), 1)
            want["log_late_pop"] = np.log1p(late[c]) / np.log1p(late).max()
            want["late_share"] = (late[c] + 1) / (pop[c] + 3)
            for name, v in want.items():
                assert got[name] == pytest.approx(v, abs=1e-5), (b, j, name)


def test_a_group_without_its_table_is_left_out_and_the_featurizer_round_trips(tmp_path):
    seqs, codes, brand, top, hists, items, feat = _world(1)
    no_sid = ListFeaturizer(ItemStats(seqs, N_ITEMS), np.zeros(N_ITEMS, np.int64), None, (), ItemTables(None, brand, top),
                            GROUP_NAMES)
    assert no_sid.groups == ("cooc", "brand", "trend") and "sid_prefix_1" not in no_sid.feature_names
    with pytest.raises(ValueError, match="unknown feature group"):
        ListFeaturizer(ItemStats(seqs, N_ITEMS), np.zeros(N_ITEMS, np.int64), groups=("colour",))
    back = ListFeaturizer.load(feat.save(tmp_path / "f"))
    assert back.groups == feat.groups and np.array_equal(back.features(items, hists), feat.features(items, hists))
    lists = feat.lists(np.arange(25), hists, items, None, None, 10, "funnel")
    again = RerankLists.load(lists.save(tmp_path / "l"))
    assert again.feature_names == feat.feature_names and np.array_equal(again.features, lists.features)
    names = feat.feature_names
    assert [names[i] for i in group_columns(names, "sid")] == list(FEATURE_GROUPS["sid"])
