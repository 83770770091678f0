import numpy as np
import polars as pl
import pytest

from thinkrec.data.batching import pad_histories, shifted_pair
from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import leave_one_out, make_split, temporal_split


def _toy() -> Dataset:
    # user a: 1 2 3 4 5; user b: 6 7 8; user c: 9 (too short for validation)
    rows = [("a", i, t) for t, i in enumerate([1, 2, 3, 4, 5])] + [("b", i, 10 + t) for t, i in enumerate([6, 7, 8])] + [("c", 9, 20)]
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row")
    return Dataset.from_frames("toy", df)


def _orig(ds: Dataset, dense) -> list[str]:
    ids = ds.items["item_id"].to_list()
    return [ids[i] for i in dense]


def test_leave_one_out_matches_definition():
    ds = _toy()
    s = leave_one_out(ds)
    ua, ub, uc = 0, 1, 2
    assert _orig(ds, s.train_sequence(ua)) == ["1", "2", "3"]
    assert _orig(ds, s.train_sequence(ub)) == ["6"]
    assert _orig(ds, s.train_sequence(uc)) == []
    assert s.valid.users.tolist() == [ua, ub]
    assert _orig(ds, s.valid.targets) == ["4", "7"]
    assert _orig(ds, s.valid.history(0)) == ["1", "2", "3"]
    assert s.test.users.tolist() == [ua, ub]
    assert _orig(ds, s.test.targets) == ["5", "8"]
    assert _orig(ds, s.test.history(1)) == ["6", "7"]
    # no test or validation target ever appears in the training data of that user
    for k, u in enumerate(s.test.users):
        assert s.test.targets[k] not in s.train_sequence(u) or False


def test_leave_one_out_no_leakage_on_random_data():
    rng = np.random.default_rng(0)
    rows = []
    for u in range(50):
        for t in range(rng.integers(3, 12)):
            rows.append((u, int(rng.integers(0, 30)), t))
    ds = Dataset.from_frames("r", pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row"))
    s = leave_one_out(ds)
    offsets, items = ds.sequences()
    for k, u in enumerate(s.test.users):
        seq = items[offsets[u] : offsets[u + 1]]
        assert s.test.targets[k] == seq[-1]
        np.testing.assert_array_equal(s.test.history(k), seq[:-1])
        np.testing.assert_array_equal(s.train_sequence(u), seq[:-2])
    assert s.n_train_interactions == ds.n_interactions - len(s.valid) - len(s.test)


def test_temporal_split_respects_time():
    rows = [(u, (u * 7 + t) % 40, u + 10 * t) for u in range(20) for t in range(10)]
    ds = Dataset.from_frames("t", pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row"))
    s = temporal_split(ds, 0.1, 0.1)
    ts = ds.interactions["ts"].to_numpy()
    cut_valid, cut_test = np.quantile(ts, [0.8, 0.9])
    inter = ds.interactions
    # every training interaction lies before the first cut
    assert s.n_train_interactions == int((ts < cut_valid).sum())
    assert len(s.test) > 0 and len(s.valid) > 0
    for k, u in enumerate(s.test.users):
        user_rows = inter.filter(pl.col("user") == int(u))
        later = user_rows.filter(pl.col("ts") >= cut_test)
        assert s.test.targets[k] == later["item"][0]
        assert len(s.test.history(k)) == user_rows.height - later.height
    with pytest.raises(ValueError):
        make_split(ds, "bogus")


def test_pad_histories_left_pads_and_truncates():
    offsets = np.array([0, 3, 3, 8])
    items = np.array([10, 11, 12, 20, 21, 22, 23, 24])
    out = pad_histories(offsets, items, np.array([0, 1, 2]), 4)
    assert out.tolist() == [[0, 11, 12, 13], [0, 0, 0, 0], [22, 23, 24, 25]]
    inp, tgt = shifted_pair(offsets, items, np.array([0, 2]), 3)
    assert inp.tolist() == [[0, 11, 12], [22, 23, 24]]
    assert tgt.tolist() == [[11, 12, 13], [23, 24, 25]]
