"""Re-ranking: list building, metrics on hand cases, the entropy gate, valid permutations, and a planted
list-context effect that a generator learns and a pointwise model cannot."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import EvalExamples, SequenceSplit, leave_one_out
from thinkrec.data.synthetic import ClickModel, SyntheticConfig, generate
from thinkrec.rerank import (
    RerankLists,
    RerankModelConfig,
    RerankTrainConfig,
    funnel_lists,
    impression_lists,
    order_metrics,
    rerank_orders,
    temporal_thirds,
    train_evaluator,
    train_reranker,
)
from thinkrec.rerank.lists import N_FEATURES, ItemStats
from thinkrec.rerank.models import PointerGenerator, entropy
from thinkrec.rerank.stage import RerankStageConfig, funnel_sets
from thinkrec.rerank.train import build_model, ideal_order, list_reward


def _lists(items, labels, hist=None, cats=None, n_items=None) -> RerankLists:
    items = np.asarray(items, dtype=np.int64)
    n, L = items.shape
    n_items = n_items or int(items.max()) + 1
    return RerankLists(
        users=np.arange(n, dtype=np.int64),
        history=np.zeros((n, 4), np.int64) if hist is None else hist,
        items=items,
        labels=np.asarray(labels, dtype=np.float32),
        features=np.zeros((n, L, N_FEATURES), np.float32),
        item_category=np.zeros(n_items, np.int64) if cats is None else cats,
        source="funnel" if hist is None else "impressions",
    )


def test_funnel_metrics_hand_case():
    # true item at initial positions 0, 3 and absent; orders move it
    lists = _lists([[5, 6, 7, 8], [1, 2, 3, 4], [9, 10, 11, 12]], [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    init = order_metrics(lists, np.tile(np.arange(4), (3, 1)))
    assert init["recall@1"].tolist() == [1, 0, 0]
    assert init["ndcg@5"] == pytest.approx([1.0, 1 / math.log2(5), 0.0])
    moved = order_metrics(lists, np.array([[1, 0, 2, 3], [3, 0, 1, 2], [0, 1, 2, 3]]))
    assert moved["recall@1"].tolist() == [0, 1, 0]
    assert moved["ndcg@5"] == pytest.approx([1 / math.log2(3), 1.0, 0.0])
    assert moved["map@5"] == pytest.approx([0.5, 1.0, 0.0])


def test_ideal_order_and_padding():
    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, False, True, True]])
    assert ideal_order(labels, mask).tolist() == [[1, 3, 0, 2], [2, 0, 3, 1]]


def test_item_stats_transitions():
    st = ItemStats([np.array([0, 1, 2, 1]), np.array([0, 1])], 4)
    assert st.popularity.tolist() == [2, 3, 1, 0]
    assert st.transitions(np.array([0, 1, 2, 3, -1]), np.array([1, 2, 1, 0, 1])).tolist() == [2, 1, 1, 0, 0]


def test_funnel_lists_label_true_item_without_leakage():
    split = SequenceSplit(3, 10, np.array([0, 3, 5, 6]), np.array([1, 2, 3, 4, 5, 6]),
                          valid=None, test=None)  # type: ignore[arg-type]
    ex = EvalExamples(np.array([0, 1]), np.array([0, 3, 5]), np.array([1, 2, 3, 4, 5]), np.array([7, 9]))
    cands = np.array([[9, 7, 2], [1, 2, -1]])
    fl = funnel_lists(ex, cands, np.array([[0.0, -1.0, -2.0], [0.0, -1.0, 0.0]]), split, np.zeros(10, np.int64))
    assert fl.labels.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert fl.features[0, 2, 6] == 1.0  # item 2 is in user 0's history
    assert fl.features[1, 2].sum() == 0.0  # padding carries no features
    assert fl.history[0].tolist()[-3:] == [2, 3, 4]  # ids + 1, most recent last


def _generator(s_max: int, thr: float, always: bool = False, seed: int = 0, static: bool = False,
               residual: bool = False) -> tuple[PointerGenerator, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, L = 64, 8
    items = np.stack([rng.choice(50, L, replace=False) for _ in range(n)])
    items[:8, 5:] = -1  # some short lists
    lists = _lists(items, np.zeros((n, L)), n_items=50)
    lists.features = rng.normal(size=lists.features.shape).astype(np.float32)
    cfg = RerankModelConfig(d_model=16, s_max=s_max, entropy_threshold=thr, always_reason=always, static_score=static,
                            reason_residual=residual)
    model = build_model("eglr", lists.item_category, lists.list_len, cfg).eval()
    return model, lists.tensors()


@pytest.mark.parametrize("thr", [0.8, 1.5, 1.9])
def test_entropy_gate_fires_only_above_threshold_and_at_most_s_max(thr):
    model, b = _generator(3, thr)
    with torch.no_grad():
        tr = model.decode(b)
    n_avail = b["mask"].sum(1, keepdim=True) - torch.arange(tr.actions.shape[1])[None]
    limit = torch.full(tr.steps.shape, thr)
    real = n_avail > 1
    assert (tr.steps <= 3).all()
    assert (tr.steps[(tr.entropy_first <= limit) | ~real] == 0).all()
    assert (tr.steps[(tr.entropy_first > limit) & real] >= 1).all()
    stopped_early = (tr.steps > 0) & (tr.steps < 3)
    assert (tr.entropy_final[stopped_early] <= limit[stopped_early] + 1e-6).all()
    assert (tr.temp_reason[..., :][tr.steps == 0] == 0).all()


def test_gate_ablations():
    model, b = _generator(2, 5.0, always=True)
    with torch.no_grad():
        tr = model.decode(b)
    n_avail = b["mask"].sum(1, keepdim=True) - torch.arange(tr.actions.shape[1])[None]
    assert (tr.steps[n_avail > 1] == 2).all()
    model0, b0 = _generator(0, 0.0)
    model1, b1 = _generator(2, 1.5)
    model1.cfg.entropy_quantile = 0.5
    with torch.no_grad():
        h_th = model1.calibrate_threshold(b1)
        tr1 = model1.decode(b1)
    n1 = b1["mask"].sum(1, keepdim=True) - torch.arange(tr1.actions.shape[1])[None]
    fired = (tr1.steps > 0)[n1 > 1].float().mean()
    assert h_th != 1.5 and 0.35 <= float(fired) <= 0.65  # the calibrated gate fires at about half the positions
    with torch.no_grad():
        assert (model0.decode(b0).steps == 0).all()


def test_residual_reasoning_starts_as_the_identity_and_learns_its_gain():
    model, b = _generator(3, 0.0, always=True, residual=True)
    with torch.no_grad():
        reasoned = model.decode(b)
        model.cfg.s_max = 0
        plain = model.decode(b)
        model.cfg.s_max = 3
    assert (reasoned.steps[:, :3] == 3).all()  # the steps run ...
    torch.testing.assert_close(reasoned.step_logits, plain.step_logits)  # ... and leave the pointer as it was
    assert torch.equal(reasoned.actions, plain.actions)
    model.train()
    loss = model.decode(b).step_logits[:, 0].logsumexp(-1).mean()
    loss.backward()
    assert model.reason_gain.grad is not None and model.reason_gain.grad.abs().sum() > 0
    with torch.no_grad():
        model.eval()
        model.reason_gain.fill_(1.0)
        moved = model.decode(b)
    assert not torch.allclose(moved.step_logits[:, 0], plain.step_logits[:, 0])


def test_dynamic_temperature_explores_on_reasoning_and_exploits_on_selection():
    model, b = _generator(3, 0.0)
    with torch.no_grad():
        tr = model.decode(b)
    t0 = model.cfg.temperature
    reasoned = tr.temp_reason > 0
    assert reasoned.any() and (tr.temp_reason[reasoned] >= t0).all()
    assert (tr.temp_select <= t0 + 1e-6).all() and (tr.temp_select < t0).any()


@pytest.mark.parametrize(("sample", "static"), [(False, False), (True, False), (False, True)])
def test_generator_never_repeats_or_invents_items(sample, static):
    model, b = _generator(3, 0.5, static=static)
    with torch.no_grad():
        tr = model.decode(b, sample=sample, generator=torch.Generator().manual_seed(1))
        order = model.complete(b, tr)
    L = b["mask"].shape[1]
    for row, m in zip(order.tolist(), b["mask"].tolist(), strict=True):
        assert sorted(row) == list(range(L))  # a permutation of the slots
        n = sum(m)
        assert sorted(row[:n]) == [i for i in range(L) if m[i]]  # every real candidate first, padding last


def test_entropy_helper_matches_formula():
    logits = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    avail = torch.tensor([[True, True, False, True]])
    assert float(entropy(logits, avail)) == pytest.approx(-sum(p * math.log(p) for p in np.exp([0, 0, 1]) / np.exp([0, 0, 1]).sum()), abs=1e-5)


def _odd_one_out(n: int, seed: int) -> RerankLists:
    """Planted list-context effect: in each list 5 items share a category and 1 does not; the odd one is
    clicked. Categories are random per list, so no single item or category is good on its own."""
    rng = np.random.default_rng(seed)
    n_items, n_cat, L = 400, 8, 6
    cats = np.arange(n_items) % n_cat + 1
    items, labels = np.zeros((n, L), np.int64), np.zeros((n, L), np.float32)
    for i in range(n):
        a, b = rng.choice(np.arange(1, n_cat + 1), 2, replace=False)
        common = rng.choice(np.nonzero(cats == a)[0], L - 1, replace=False)
        odd = rng.choice(np.nonzero(cats == b)[0])
        pos = rng.integers(L)
        row = np.insert(common, pos, odd)
        items[i], labels[i, pos] = row, 1.0
    lists = _lists(items, labels, hist=np.zeros((n, 4), np.int64), cats=cats.astype(np.int64), n_items=n_items)
    return lists


def test_generator_learns_planted_list_context_effect():
    torch.manual_seed(0)
    train, valid = _odd_one_out(1500, 0), _odd_one_out(300, 1)
    cfg = RerankModelConfig(d_model=32, item_embedding=False, s_max=1, max_decode=3)
    tc = RerankTrainConfig(epochs=12, patience=12, lr=3e-3, rl_epochs=0)
    gen, _ = train_reranker("eglr", train, valid, cfg, tc, log=lambda s: None)
    dnn, _ = train_reranker("dnn", train, valid, cfg, tc, log=lambda s: None)
    r1_gen = order_metrics(valid, rerank_orders(gen, valid))["map@5"]
    top_gen = (np.take_along_axis(valid.labels, rerank_orders(gen, valid), 1)[:, 0] > 0).mean()
    top_dnn = (np.take_along_axis(valid.labels, rerank_orders(dnn, valid), 1)[:, 0] > 0).mean()
    assert top_gen >= 0.9, (top_gen, r1_gen.mean())
    # a pointwise model can only order categories globally: the odd one is on top about half the time
    assert top_dnn <= 0.65


def test_synthetic_impressions_pipeline_and_reward():
    ds = generate(SyntheticConfig(n_users=200, n_items=150, n_impressions=300, seed=3))
    lists, _ = impression_lists(ds)
    assert lists.items.shape == (300, 20) and lists.features.shape == (300, 20, N_FEATURES)
    assert np.array_equal(lists.labels > 0, np.concatenate([np.asarray(c)[None] for c in ds.impressions.sort(["ts", "impression"])["clicks"].to_list()]) > 0)
    tr, va, te = temporal_thirds(lists)
    assert len(tr) + len(va) + len(te) == 300
    cfg = RerankModelConfig(d_model=16)
    tc = RerankTrainConfig(epochs=1, evaluator_epochs=2, rl_epochs=1, rollouts=4)
    ev, hist = train_evaluator(tr, va, cfg, tc, log=lambda s: None)
    assert len(hist) >= 1
    b = te.tensors()
    ident = torch.arange(te.list_len).expand(len(te), -1)
    r = list_reward(ev, b, ident, "clicks")
    assert r.shape == (len(te),) and (r > 0).all() and (r <= te.list_len).all()
    model, h = train_reranker("eglr", tr, va, cfg, tc, evaluator=ev, log=lambda s: None)
    assert any(x["stage"] == "rl" for x in h)
    order = rerank_orders(model, te)
    cm = ClickModel.from_dataset(ds)
    ec = cm.expected_clicks_batch(te.users, [x[x > 0] - 1 for x in te.history], np.take_along_axis(te.items, order, 1))
    assert ec.shape == (len(te),) and (ec > 0).all()


def test_lists_save_load_roundtrip(tmp_path):
    lists = _lists([[1, 2, -1]], [[0, 1, 0]])
    lists.meta["x"] = 1
    back = RerankLists.load(lists.save(tmp_path / "l"))
    assert np.array_equal(back.items, lists.items) and back.meta == {"x": 1} and back.source == "funnel"
    with pytest.raises(FileNotFoundError, match="lists.safetensors"):
        RerankLists.load(tmp_path / "missing")


def test_rl_models_need_an_evaluator_and_a_known_selection_rule():
    lists = _odd_one_out(64, 2)
    cfg = RerankModelConfig(d_model=8, max_decode=2)
    with pytest.raises(ValueError, match="evaluator"):
        train_reranker("egrerank", lists, lists, cfg, RerankTrainConfig(epochs=1), log=lambda s: None)
    ev, _ = train_evaluator(lists, lists, cfg, RerankTrainConfig(evaluator_epochs=1), log=lambda s: None)
    with pytest.raises(ValueError, match="rl_select"):
        train_reranker("eglr", lists, lists, cfg, RerankTrainConfig(epochs=1, rl_select="best"), evaluator=ev,
                       log=lambda s: None)
    with pytest.raises(ValueError, match="unknown re-ranker"):
        train_reranker("lambdamart", lists, lists, cfg, RerankTrainConfig(epochs=1), log=lambda s: None)


def test_funnel_sets_train_on_validation_targets_and_test_on_test_targets(tmp_path):
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    seqs = [rng.choice(n_items, rng.integers(4, 8), replace=False) for _ in range(n_users)]
    inter = pl.DataFrame({"user_id": [str(u) for u, s in enumerate(seqs) for _ in s],
                          "item_id": [str(i) for s in seqs for i in s],
                          "ts": [t for s in seqs for t in range(len(s))]})
    split = leave_one_out(Dataset.from_frames("toy", inter))
    calls = []

    def top_k(ex):  # a retriever that always retrieves the target at rank 2, plus random others
        calls.append(ex)
        cands = np.stack([np.r_[(t + 1) % n_items, t, (t + 2) % n_items] for t in ex.targets])
        return cands, -np.tile(np.arange(3.0), (len(ex), 1))

    tr, va, te, featurizer = funnel_sets(split, top_k, np.zeros(split.n_items, np.int64), RerankStageConfig(holdout_frac=0.25))
    assert calls[0] is split.valid and calls[1] is split.test
    assert len(tr) + len(va) == len(split.valid) and len(te) == len(split.test)
    assert not set(tr.users) & set(va.users)  # held-out users are disjoint
    assert (te.labels[:, 1] == 1).all() and te.labels.sum() == len(te)
    assert np.array_equal(np.sort(np.r_[tr.users, va.users]), np.sort(split.valid.users))
    # the featurizer saved beside the lists rebuilds the test lists' features exactly from ids alone
    from thinkrec.rerank.lists import ListFeaturizer

    loaded = ListFeaturizer.load(featurizer.save(tmp_path / "featurizer"))
    hist = [split.test.history(i) for i in range(len(split.test))]
    again = loaded.lists(te.users, hist, te.items, None, -np.tile(np.arange(3.0), (len(te), 1)), 50, "funnel")
    assert np.array_equal(again.features, te.features) and np.array_equal(again.history, te.history)


def test_reference_orders_know_the_true_click_model():
    from thinkrec.rerank.stage import evaluate_orders, reference_orders

    ds = generate(SyntheticConfig(n_users=200, n_items=150, n_impressions=200, seed=5))
    lists, _ = impression_lists(ds)
    cm = ClickModel.from_dataset(ds)
    refs = reference_orders(lists, cm)
    n, L = lists.items.shape
    hist = [h[h > 0] - 1 for h in lists.history]
    for orders in refs.values():
        assert np.array_equal(np.sort(orders, 1), np.tile(np.arange(L), (n, 1)))  # permutations of each list
    # attractiveness: each list sorted by the true per-item click probability if examined
    a0 = cm.attractiveness(int(lists.users[0]), hist[0], lists.items[0])
    assert np.all(np.diff(a0[refs["attractiveness"][0]]) <= 1e-12)
    ec = {name: evaluate_orders(lists, o, None, "clicks", cm)["expected_clicks"].mean()
          for name, o in {"initial": np.tile(np.arange(L), (n, 1)), **refs}.items()}
    assert ec["true_greedy"] > ec["attractiveness"] > ec["initial"]


def test_reordered_lists_put_each_candidate_row_at_its_new_place():
    rng = np.random.default_rng(0)
    n, L, F = 6, 5, 3
    items = rng.permutation(40)[: n * L].reshape(n, L)
    items[0, 3:] = -1  # padding stays last
    lists = RerankLists(np.arange(n), np.ones((n, 4), dtype=np.int64), items, rng.random((n, L)).astype(np.float32),
                        rng.random((n, L, F)).astype(np.float32), np.zeros(40, dtype=np.int64), source="funnel")
    orders = np.stack([rng.permutation(L) for _ in range(n)])
    orders[0] = [2, 0, 1, 3, 4]
    out = lists.reordered(orders)
    for r in range(n):
        for pos, j in enumerate(orders[r]):  # position pos of the new list is candidate j of the old one
            assert out.items[r, pos] == lists.items[r, j] and out.labels[r, pos] == lists.labels[r, j]
            assert np.array_equal(out.features[r, pos], lists.features[r, j])
    assert out.items[0].tolist()[3:] == [-1, -1]
    with pytest.raises(ValueError, match="shape"):
        lists.reordered(orders[:, :3])
