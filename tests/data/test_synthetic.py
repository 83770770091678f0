"""The synthetic dataset: determinism, schema, planted structure and the known click model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from thinkrec.data.dataset import CATALOG_COLUMNS, IMPRESSION_SCHEMA, INTERACTION_SCHEMA, Dataset
from thinkrec.data.synthetic import ClickModel, SyntheticConfig, build_world, generate, item_vectors

SMALL = {"n_users": 300, "n_items": 300, "n_impressions": 200}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate()


@pytest.fixture(scope="module")
def model(ds: Dataset) -> ClickModel:
    return ClickModel.from_dataset(ds)


def _frames(d: Dataset) -> list[pl.DataFrame]:
    assert d.impressions is not None
    return [d.interactions, d.items, d.users, d.impressions]


def test_deterministic_from_seed() -> None:
    a, b = generate(SyntheticConfig(seed=3, **SMALL)), generate(SyntheticConfig(seed=3, **SMALL))
    for fa, fb in zip(_frames(a), _frames(b), strict=True):
        assert fa.equals(fb)
    assert a.meta == b.meta
    c = generate(SyntheticConfig(seed=4, **SMALL))
    assert not a.interactions.equals(c.interactions)
    assert not a.items["title"].equals(c.items["title"])
    assert not a.impressions.equals(c.impressions)  # type: ignore[union-attr]


def test_default_sizes_schema_and_speed(ds: Dataset) -> None:
    cfg = SyntheticConfig()
    t0 = time.perf_counter()
    generate(cfg)
    assert time.perf_counter() - t0 < 5.0
    assert ds.name == "synthetic"
    assert (ds.n_users, ds.n_items) == (cfg.n_users, cfg.n_items)
    assert ds.interactions.schema == INTERACTION_SCHEMA
    assert list(ds.items.columns[: len(CATALOG_COLUMNS)]) == list(CATALOG_COLUMNS)
    assert all(ds.items.schema[c] == t for c, t in CATALOG_COLUMNS.items())
    assert ds.impressions is not None and ds.impressions.schema == IMPRESSION_SCHEMA
    assert ds.impressions.height == cfg.n_impressions
    assert (ds.impressions["items"].list.len() == cfg.list_len).all()
    lengths = ds.interactions.group_by("user").len()["len"]
    assert lengths.min() >= cfg.min_seq_len and lengths.max() <= cfg.max_seq_len
    assert 10 <= lengths.mean() <= 15  # type: ignore[operator]
    assert ds.meta["config"] == {**cfg.__dict__}
    assert ds.meta["click_model"]["leaf_redundancy"] == cfg.leaf_redundancy
    assert ds.items["price"].min() > 0  # type: ignore[operator]


def test_ids_dense_and_lists_valid(ds: Dataset) -> None:
    assert ds.users["user"].to_list() == list(range(ds.n_users))
    assert ds.items["item"].to_list() == list(range(ds.n_items))
    assert set(ds.interactions["user"].unique().to_list()) == set(range(ds.n_users))
    inter_items = ds.interactions["item"].to_numpy()
    assert inter_items.min() >= 0 and inter_items.max() < ds.n_items
    assert ds.impressions is not None
    shown = ds.impressions["items"].to_list()
    hist = ds.impressions["history"].to_list()
    assert all(len(set(s)) == len(s) for s in shown)  # no duplicates in a list
    assert all(not set(s) & set(h) for s, h in zip(shown, hist, strict=True))  # bought items are not shown
    assert all(len(h) >= 1 for h in hist)


def test_ts_increasing_and_history_is_prefix(ds: Dataset) -> None:
    diffs = ds.interactions.with_columns(pl.col("ts").diff().over("user").alias("d"))["d"].drop_nulls()
    assert (diffs > 0).all()
    offsets, items = ds.sequences()
    ts = ds.interactions["ts"].to_numpy()
    assert ds.impressions is not None
    assert (ds.impressions["ts"].diff().drop_nulls() >= 0).all()  # impression ids follow time
    for row in ds.impressions.head(300).iter_rows(named=True):
        lo, hi = offsets[row["user"]], offsets[row["user"] + 1]
        n = len(row["history"])
        assert items[lo : lo + n].tolist() == row["history"]
        assert ts[lo + n - 1] < row["ts"] and (lo + n == hi or row["ts"] < ts[lo + n])


def test_zipf_popularity(ds: Dataset) -> None:
    counts = np.sort(np.bincount(ds.interactions["item"].to_numpy(), minlength=ds.n_items))[::-1]
    share = counts[: ds.n_items // 10].sum() / counts.sum()
    assert share > 0.3  # uniform popularity would give 0.1
    assert counts[0] > 20 * np.median(counts)


def test_text_carries_category_signal(ds: Dataset) -> None:
    world = build_world(SyntheticConfig())
    rows = ds.items.to_dicts()
    for row in rows:
        top, mid, leaf = row["categories"]
        assert leaf in row["title"] and row["brand"] in row["title"]
        assert mid.lower() in row["description"] and top.lower() in row["description"]
        assert any(a in row["title"] for a in world.mid_attrs[row["mid"]])  # mid-level vocabulary
        assert row["category_path"] == f"{top} > {mid} > {leaf}"
    assert len({r["categories"][0] for r in rows}) == 4 and len({r["categories"][2] for r in rows}) == 64
    # Brands have a home category: most of a brand's items share its most common top category.
    by_brand = ds.items.group_by("brand", "top").len().group_by("brand").agg(
        (pl.col("len").max() / pl.col("len").sum()).alias("purity")
    )
    assert by_brand["purity"].mean() > 0.7  # type: ignore[operator]
    # Prices depend on the category.
    price = ds.items.group_by("category_path").agg(pl.col("price").mean())
    assert price["price"].max() > 3 * price["price"].min()  # type: ignore[operator]


def test_planted_sequential_dependency(ds: Dataset) -> None:
    world = build_world(SyntheticConfig())
    offsets, seq = ds.sequences()
    starts = np.zeros(seq.size, dtype=bool)
    starts[offsets[:-1]] = True
    prev, nxt = seq[:-1][~starts[1:]], seq[1:][~starts[1:]]
    base = np.bincount(seq, minlength=ds.n_items) / seq.size
    first = world.complements[prev, 0]
    assert (nxt == first).mean() > 50 * base[first].mean()

    # Learnable: a bigram model (what a sequence model can pick up) beats popularity by far on the last item.
    n = ds.n_items
    last_prev, last = seq[offsets[1:] - 2], seq[offsets[1:] - 1]
    train = np.ones(seq.size, dtype=bool)
    train[offsets[1:] - 1] = False
    counts = np.bincount(seq[train], minlength=n).astype(float)
    t_prev, t_next = seq[:-1], seq[1:]
    keep = train[1:] & ~starts[1:]
    bigram = np.zeros((n, n))
    np.add.at(bigram, (t_prev[keep], t_next[keep]), 1.0)
    pop_hr = np.isin(last, np.argsort(-counts)[:10]).mean()
    top10 = np.argsort(-(bigram[last_prev] + 1e-3 * counts), axis=1)[:, :10]
    bigram_hr = (top10 == last[:, None]).any(1).mean()
    assert bigram_hr > 3 * pop_hr


def test_position_bias(model: ClickModel, ds: Dataset) -> None:
    exam = model.examination(20)
    assert exam[0] == 1.0 and np.all(np.diff(exam) < 0)
    # One item per mid category: no redundancy, so moving an item down only lowers its probability.
    items = ds.items.group_by("mid").agg(pl.col("item").first()).sort("mid")["item"].to_numpy()
    history = np.array([0, 1, 2])
    fwd = model.click_probs(5, history, items)
    rev = model.click_probs(5, history, items[::-1])[::-1]
    assert np.all(fwd[:7] > rev[:7]) and np.all(fwd[-7:] < rev[-7:])
    np.testing.assert_allclose(fwd, model.attractiveness(5, history, items) * exam[: items.size])


def test_redundancy_discount(model: ClickModel, ds: Dataset) -> None:
    leaf, top = ds.items["leaf"].to_numpy(), ds.items["top"].to_numpy()
    a, b = np.flatnonzero(leaf == leaf[0])[:2]
    other = int(np.flatnonzero(top != top[a])[0])
    history = np.array([10, 11])
    after_similar = model.click_probs(7, history, np.array([a, b]))[1]
    after_other = model.click_probs(7, history, np.array([other, b]))[1]
    assert after_similar < after_other
    assert after_similar == pytest.approx(after_other * model.params.leaf_redundancy)
    # Padding is ignored: probability 0 and no context effect.
    padded = model.click_probs(7, history, np.array([-1, b]))
    assert padded[0] == 0.0 and padded[1] == pytest.approx(after_other)


def test_expected_clicks_of_logged_and_permuted_lists(model: ClickModel, ds: Dataset) -> None:
    assert ds.impressions is not None
    row = ds.impressions.row(0, named=True)
    history, items = np.asarray(row["history"]), np.asarray(row["items"])
    probs = model.click_probs(row["user"], history, items)
    assert model.expected_clicks(row["user"], history, items) == pytest.approx(probs.sum())
    assert np.all((probs >= 0) & (probs <= 1))
    perm = np.random.default_rng(0).permutation(items.size)
    permuted = model.expected_clicks(row["user"], history, items[perm])
    assert permuted != pytest.approx(probs.sum())  # the order matters
    batch = model.impression_probs(ds.impressions.head(50))
    np.testing.assert_allclose(batch[0], probs)
    # The logging policy ignores redundancy, so a redundancy-aware order gains clicks (room for re-rankers).
    gains = []
    for r in ds.impressions.head(100).iter_rows(named=True):
        h, it = np.asarray(r["history"]), np.asarray(r["items"])
        gains.append(model.expected_clicks(r["user"], h, it[model.greedy_order(r["user"], h, it)])
                     - model.expected_clicks(r["user"], h, it))
    assert np.mean(gains) > 0.1


def test_observed_clicks_match_model(model: ClickModel, ds: Dataset) -> None:
    assert ds.impressions is not None
    probs = model.impression_probs(ds.impressions)
    clicks = np.array(ds.impressions["clicks"].to_list(), dtype=float)
    var = probs * (1 - probs)
    assert abs(clicks.sum() - probs.sum()) < 4 * np.sqrt(var.sum())
    z_pos = (clicks.sum(0) - probs.sum(0)) / np.sqrt(var.sum(0))
    assert np.all(np.abs(z_pos) < 4.5)
    # Calibration across probability deciles, not just positions.
    flat_p, flat_c, flat_v = probs.ravel(), clicks.ravel(), var.ravel()
    bins = np.digitize(flat_p, np.quantile(flat_p, np.linspace(0, 1, 11)[1:-1]))
    for k in range(10):
        m = bins == k
        assert abs(flat_c[m].sum() - flat_p[m].sum()) < 4.5 * np.sqrt(flat_v[m].sum()) + 1e-9


def test_click_model_rebuilds_from_meta_and_saved_dataset(ds: Dataset, model: ClickModel, tmp_path: Path) -> None:
    small = generate(SyntheticConfig(seed=1, **SMALL))
    loaded = Dataset.load(small.save(tmp_path / "synthetic"))
    m_saved = ClickModel.from_dataset(loaded)
    m_meta = ClickModel.from_meta(small.meta)
    assert loaded.impressions is not None
    np.testing.assert_allclose(
        m_saved.impression_probs(loaded.impressions), m_meta.impression_probs(loaded.impressions)
    )
    with pytest.raises(ValueError, match="not written by"):
        ClickModel.from_meta({"config": {}})
    with pytest.raises(ValueError, match="does not match"):
        wrong_items = ds.items.head(300)  # another seed's catalogue
        ClickModel.from_dataset(Dataset(small.name, small.interactions, wrong_items, small.users, None, small.meta))


def test_config_validation_and_string_coercion() -> None:
    with pytest.raises(ValueError, match="n_items"):
        SyntheticConfig(n_items=10)
    cfg = SyntheticConfig(n_users="500", drift_rate="0.2")  # type: ignore[arg-type]
    assert cfg.n_users == 500 and isinstance(cfg.n_users, int) and cfg.drift_rate == 0.2


def test_larger_tree_gets_generated_names() -> None:
    d = generate(SyntheticConfig(n_top=5, n_mid=5, n_leaf=2, n_items=400, n_users=200, n_impressions=50))
    paths = d.items["category_path"].unique()
    assert d.items["leaf"].n_unique() == 50 and paths.len() == 50
    assert all(leaf in t for leaf, t in zip(d.items["categories"].list.last(), d.items["title"], strict=True))


def test_large_catalogue_memory_is_bounded_by_users_times_length() -> None:
    """20k users over 200k items: a dense users × items "seen" matrix (4 GB of bools) or [1000, n_items] float64
    proposals (1.6 GB each) would dwarf the catalogue (~0.8 GB of text); the invariants still hold."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = generate(SyntheticConfig(n_users=20_000, n_items=200_000, mean_seq_len=6, n_impressions=30, seed=2))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 2000
    per_user = d.interactions.group_by("user").agg(pl.col("item").n_unique().alias("u"), pl.len().alias("n"))
    assert (per_user["u"] == per_user["n"]).mean() > 0.99  # no repeat purchases (rare leftovers may repeat)
    assert d.impressions is not None and d.impressions.height == 30


def test_item_vectors_cluster_by_category(ds: Dataset) -> None:
    x = item_vectors(ds, dim=32)
    assert x.shape == (ds.n_items, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(x, item_vectors(ds, dim=32))
    leaf = ds.items["leaf"].to_numpy()
    sim = x @ x.T
    same = leaf[:, None] == leaf[None, :]
    off = ~np.eye(len(leaf), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.3
    assert len(np.unique(x.round(4), axis=0)) == ds.n_items  # noise keeps every item distinct
