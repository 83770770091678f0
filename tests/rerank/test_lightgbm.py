"""LightGBM LambdaRank re-ranker: learns a planted feature, survives save / load (also in a fresh process from the
folder alone), refuses lists of another feature width, and runs through the registry like the torch re-rankers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from thinkrec.rerank import (
    RerankLists,
    RerankModelConfig,
    RerankTrainConfig,
    order_metrics,
    rerank_orders,
    train_reranker,
)
from thinkrec.rerank.gbdt import LightGBMConfig, LightGBMRanker, query_data, train_lightgbm
from thinkrec.rerank.lists import FEATURES, N_FEATURES
from thinkrec.rerank.stage import load_reranker, save_reranker
from thinkrec.rerank.train import build_model

PLANTED = 3  # the positive is the candidate with the largest value of this feature column
QUIET = lambda m: None  # noqa: E731


def _planted(n: int, seed: int, L: int = 20, short: bool = False, n_features: int = N_FEATURES) -> RerankLists:
    """``n`` funnel lists of ``L`` candidates in random order, noise in every column; label 1 on the candidate
    whose column ``PLANTED`` is largest (one random candidate per list gets +1.5 there, so the largest stands
    out of the tail's few histogram bins instead of tying its runner-up in one). ``short``: every third list
    keeps only its first half (padding after)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, L, n_features)).astype(np.float32)
    items = rng.permuted(np.tile(np.arange(L), (n, 1)), axis=1).astype(np.int64)
    if short:
        items[::3, L // 2:] = -1
    mask = items >= 0
    feats[np.arange(n), rng.integers(0, mask.sum(1)), PLANTED] += 1.5  # real candidates come first
    feats[~mask] = 0.0
    best = np.where(mask, feats[..., PLANTED], -np.inf).argmax(1)
    labels = np.zeros((n, L), np.float32)
    labels[np.arange(n), best] = 1.0
    return RerankLists(np.arange(n, dtype=np.int64), np.zeros((n, 4), np.int64), items, labels, feats,
                       np.zeros(L, np.int64), "funnel")


def _config(**gbdt) -> RerankTrainConfig:
    base = {"n_estimators": 200, "early_stopping_rounds": 20, "num_threads": 1}
    return RerankTrainConfig(seed=0, gbdt=LightGBMConfig(**{**base, **gbdt}))


@pytest.fixture(scope="module")
def trained() -> tuple[LightGBMRanker, list[dict], RerankLists]:
    # small trees: the planted rule is monotone in one column, and 63-leaf trees fit the other columns' noise of a
    # test-sized sample (train recall@1 1.0, test ~0.9)
    model, hist = train_lightgbm(_planted(1000, 1), _planted(200, 2), _config(num_leaves=7), QUIET)
    return model, hist, _planted(300, 3)


def test_learns_planted_feature(trained):
    model, hist, test = trained
    init = order_metrics(test, rerank_orders(None, test))["recall@1"].mean()
    learned = order_metrics(test, rerank_orders(model, test))["recall@1"].mean()
    assert init < 0.12 and learned >= 0.9, (init, learned)
    gain = model.feature_importance()
    assert list(gain) == list(FEATURES) and max(gain, key=gain.get) == FEATURES[PLANTED]
    assert hist and {"round", "valid_ndcg@10"} <= set(hist[0]) and 0 < model.n_trees <= len(hist)
    assert model.n_trees == int(np.argmax([h["valid_ndcg@10"] for h in hist])) + 1  # cut to the best round


def test_query_data_groups_real_candidates():
    lists = _planted(6, 0, L=5, short=True)
    x, y, group = query_data(lists)
    assert group.tolist() == [2, 5, 5, 2, 5, 5] and x.shape == (24, N_FEATURES) and y.sum() == 6
    assert np.array_equal(x, lists.features[lists.mask])


def test_save_load_same_orders_and_scores(trained, tmp_path):
    model, hist, test = trained
    save_reranker(model, "lightgbm", tmp_path / "m", hist, test.list_len)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "history.json", "importance.json",
                                                                   "model.txt"]
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["name"] == "lightgbm" and info["features"] == list(FEATURES) and info["gbdt"]["num_threads"] == 1
    assert info["list_len"] == test.list_len
    name, loaded = load_reranker(tmp_path / "m")
    assert name == "lightgbm" and isinstance(loaded, LightGBMRanker) and not loaded.training
    assert np.array_equal(rerank_orders(model, test), rerank_orders(loaded, test))
    b = test.tensors()
    assert torch.allclose(model.scores(b).double(), loaded.scores(b).double(), atol=1e-9, rtol=0)
    assert loaded.feature_importance() == pytest.approx(model.feature_importance(), abs=1e-9)


def test_load_in_fresh_process_from_folder_alone(trained, tmp_path):
    model, hist, test = trained
    save_reranker(model, "lightgbm", tmp_path / "saved", hist, test.list_len)
    alone = tmp_path / "elsewhere" / "lightgbm"
    shutil.copytree(tmp_path / "saved", alone)
    shutil.rmtree(tmp_path / "saved")
    np.save(tmp_path / "features.npy", test.features)
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from thinkrec.rerank.stage import load_reranker
        name, model = load_reranker({str(alone)!r})
        feats = torch.from_numpy(np.load({str(tmp_path / 'features.npy')!r}))
        np.save({str(tmp_path / 'scores.npy')!r}, model.scores({{"features": feats}}).numpy())
        print(name)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "lightgbm"
    assert np.array_equal(np.load(tmp_path / "scores.npy"), model.scores(test.tensors()).numpy())


def test_feature_count_mismatch_names_both(trained):
    model, _, _ = trained
    wide = _planted(4, 5, n_features=N_FEATURES + 3)
    with pytest.raises(ValueError, match=rf"{N_FEATURES + 3}.*{N_FEATURES}"):
        rerank_orders(model, wide)


def test_registry_train_and_padding_last():
    train, valid, test = _planted(300, 11, short=True), _planted(60, 12, short=True), _planted(60, 13, short=True)
    model, hist = train_reranker("lightgbm", train, valid, RerankModelConfig(), _config(n_estimators=50), log=QUIET)
    assert isinstance(model, LightGBMRanker) and hist
    orders = rerank_orders(model, test)
    n_real = test.mask.sum(1)
    shown = np.take_along_axis(test.mask, orders, 1)
    assert all(shown[i, : n_real[i]].all() and not shown[i, n_real[i]:].any() for i in range(len(test)))
    assert all(sorted(o) == list(range(test.list_len)) for o in orders.tolist())
    with pytest.raises(ValueError, match="not built from a model config"):
        build_model("lightgbm", train.item_category, train.list_len, RerankModelConfig())


def test_deterministic_and_seeded():
    train, valid = _planted(200, 21), _planted(50, 22)
    cfg = _config(n_estimators=30)
    a, _ = train_lightgbm(train, valid, cfg, QUIET)
    b, _ = train_lightgbm(train, valid, cfg, QUIET)
    assert a.booster.model_to_string() == b.booster.model_to_string()
    c, _ = train_lightgbm(train, valid, replace(cfg, seed=1), QUIET)
    assert c.booster.model_to_string() != a.booster.model_to_string()  # bagging / feature sampling follow the seed


def test_merged_source_names_and_holdout_without_positives():
    """Merged lists name columns ``<source>:<feature>`` (JSON punctuation LightGBM refuses: renamed for it, kept
    for the importance); a hold-out without positives trains every round, without early stopping."""
    train, valid = _planted(150, 31, n_features=N_FEATURES + 3), _planted(20, 32, n_features=N_FEATURES + 3)
    train.meta["sources"] = valid.meta["sources"] = ["sasrec"]
    valid.labels[:] = 0.0
    model, hist = train_lightgbm(train, valid, _config(n_estimators=15), QUIET)
    assert hist == [] and model.n_trees == 15
    assert list(model.feature_importance())[-3:] == ["sasrec:recip_rank", "sasrec:score_z", "sasrec:missing"]


def test_config_ranges():
    from thinkrec.utils.config import validate

    assert validate(RerankTrainConfig()) == []
    bad = RerankTrainConfig(gbdt=LightGBMConfig(num_leaves=1, feature_fraction=0.0))
    assert validate(bad) == ["gbdt.num_leaves: must be in [2, 131072] (got 1)",
                             "gbdt.feature_fraction: must be in (0, 1] (got 0.0)"]
