import math

import numpy as np
import pytest
import torch

from thinkrec.eval.metrics import list_metrics, rank_metrics, ranks_from_scores

ranx = pytest.importorskip("ranx")


def _ranx_eval(qrels: dict, run: dict, metrics: list[str]) -> dict[str, np.ndarray]:
    q, r = ranx.Qrels(qrels), ranx.Run(run)
    return {m: np.asarray(ranx.evaluate(q, r, m, return_mean=False), dtype=float) for m in metrics}


def test_next_item_metrics_match_ranx():
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 50
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    targets = rng.integers(0, n_items, n_users)
    ranks = ranks_from_scores(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    ours = rank_metrics(ranks, ks=(5, 10))
    qrels = {f"u{u:05d}": {f"i{targets[u]}": 1} for u in range(n_users)}
    run = {f"u{u:05d}": {f"i{i}": float(scores[u, i]) for i in range(n_items)} for u in range(n_users)}
    ref = _ranx_eval(qrels, run, ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr"])
    for key in ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr"]:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-6, atol=1e-9, err_msg=key)


def test_rank_hand_cases_and_pessimistic_ties():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [1.0, 1.0, 1.0, 0.0]])
    ranks = ranks_from_scores(scores, torch.tensor([2, 0]))
    assert ranks.tolist() == [1, 2]  # second row: two ties count against the target
    m = rank_metrics(ranks, ks=(1, 2))
    assert m["recall@1"].tolist() == [0.0, 0.0]
    assert m["recall@2"].tolist() == [1.0, 0.0]
    assert m["ndcg@2"][0] == pytest.approx(1 / math.log2(3))
    assert m["mrr"].tolist() == pytest.approx([0.5, 1 / 3])


def test_masked_items_never_outrank():
    scores = torch.tensor([[5.0, float("-inf"), 1.0], [float("-inf"), float("-inf"), 0.0]])
    assert ranks_from_scores(scores, torch.tensor([2, 2])).tolist() == [1, 0]


def test_list_metrics_hand_case():
    # displayed order labels: [0, 1, 0, 1, 1]
    labels = np.array([[0, 1, 0, 1, 1]])
    m = list_metrics(labels, ks=(3, 5))
    # MAP@3: hits at 2 → precision 1/2, one hit in the top 3
    assert m["map@3"][0] == pytest.approx(0.5)
    # MAP@5: hits at 2, 4, 5 → (1/2 + 2/4 + 3/5) / 3
    assert m["map@5"][0] == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    dcg3 = 1 / math.log2(3)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"][0] == pytest.approx(dcg3 / idcg3)
    # a list with no clicks scores 0 on both
    z = list_metrics(np.zeros((1, 4)), ks=(3,))
    assert z["map@3"][0] == 0 and z["ndcg@3"][0] == 0


def test_list_ndcg_graded_matches_ranx_burges_and_order_is_applied():
    rng = np.random.default_rng(1)
    n, length = 60, 8
    labels = rng.integers(0, 3, size=(n, length)) * (rng.random((n, length)) < 0.5)
    scores = rng.normal(size=(n, length))
    order = np.argsort(-scores, axis=1)
    ours = list_metrics(labels, order, ks=(5,))
    keep = labels.sum(1) > 0
    qrels = {f"q{i:05d}": {f"d{j}": int(labels[i, j]) for j in range(length) if labels[i, j] > 0} for i in range(n) if keep[i]}
    run = {f"q{i:05d}": {f"d{j}": float(scores[i, j]) for j in range(length)} for i in range(n) if keep[i]}
    ref = _ranx_eval(qrels, run, ["ndcg_burges@5"])["ndcg_burges@5"]
    np.testing.assert_allclose(ours["ndcg@5"][keep], ref, rtol=1e-6)
    assert np.all(ours["ndcg@5"][~keep] == 0)


def test_list_map_independent_loop():
    rng = np.random.default_rng(2)
    labels = (rng.random((100, 10)) < 0.3).astype(int)
    ours = list_metrics(labels, ks=(5,))["map@5"]
    for row, value in zip(labels, ours, strict=True):
        hits, total = 0, 0.0
        for i, y in enumerate(row[:5]):
            if y:
                hits += 1
                total += hits / (i + 1)
        assert value == pytest.approx(total / hits if hits else 0.0)


def _brute_dcg(gains: list[float], k: int) -> float:
    """DCG@k written out position by position (1-based position p discounted by log2(p + 1))."""
    total = 0.0
    for p, g in enumerate(gains[:k], start=1):
        total += (2.0**g - 1.0) / math.log2(p + 1)
    return total


def test_metrics_match_a_brute_force_dcg_on_hand_made_lists():
    # next-item: one relevant item at 0-based rank r is the list [0]*r + [1]
    for r in range(12):
        m = rank_metrics(np.array([r]), ks=(1, 5, 10))
        for k in (1, 5, 10):
            ideal = _brute_dcg([1.0], k)
            assert m[f"ndcg@{k}"][0] == pytest.approx(_brute_dcg([0.0] * r + [1.0], k) / ideal)
            assert m[f"recall@{k}"][0] == float(1.0 in ([0.0] * r + [1.0])[:k])
        assert m["mrr"][0] == pytest.approx(1.0 / (r + 1))
    # graded lists, scored in a shuffled order
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(25, 7)) * (rng.random((25, 7)) < 0.6)
    order = np.argsort(rng.random((25, 7)), axis=1)
    ours = list_metrics(labels, order, ks=(3, 7))
    for i in range(25):
        shown = [float(labels[i, j]) for j in order[i]]
        ideal_order = sorted(shown, reverse=True)
        for k in (3, 7):
            idcg = _brute_dcg(ideal_order, k)
            assert ours[f"ndcg@{k}"][i] == pytest.approx(_brute_dcg(shown, k) / idcg if idcg > 0 else 0.0)


def test_rank_conversions_and_unretrieved_targets():
    from thinkrec.eval.metrics import first_hit_ranks, ranks_from_positions

    assert ranks_from_positions([1, 3, 0]).tolist() == [0.0, 2.0, math.inf]
    assert first_hit_ranks(np.array([[0, 0, 1], [1, 0, 1], [0, 0, 0]])).tolist() == [2.0, 0.0, math.inf]
    m = rank_metrics(np.array([math.inf]), ks=(5,))  # not retrieved: 0 everywhere, no warnings
    assert m["recall@5"][0] == 0 and m["ndcg@5"][0] == 0 and m["mrr"][0] == 0


def _old_llm_metrics(positions: np.ndarray) -> dict[str, float]:
    """The LLM stage's former 1-based formulas (0 = absent), kept here as the reference."""
    r = np.asarray(positions, dtype=np.float64)
    hit = r > 0
    return {"recall@1": float(np.mean(hit & (r == 1))), "recall@5": float(np.mean(hit & (r <= 5))),
            "ndcg@5": float(np.mean(np.where(hit & (r <= 5), 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)))}


def test_llm_and_rerank_paths_agree_with_eval_metrics():
    pytest.importorskip("transformers")
    from thinkrec.llm.stage import answer_metrics
    from thinkrec.rerank.lists import N_FEATURES, RerankLists
    from thinkrec.rerank.train import order_metrics

    rng = np.random.default_rng(5)
    n, L = 400, 10
    target = rng.integers(-1, L, size=n)  # 0-based index of the true item in the displayed order, −1 = absent
    ranks = np.where(target >= 0, target, np.inf)
    ref = rank_metrics(ranks, ks=(1, 5))

    # llm: 1-based positions, 0 = absent
    positions = np.where(target >= 0, target + 1, 0)
    got = answer_metrics(positions)
    for key in ("recall@1", "recall@5", "ndcg@5"):
        assert got[key] == float(ref[key].mean()) == _old_llm_metrics(positions)[key], key  # bit for bit

    # rerank: funnel lists with one positive label, shown in a random order
    order = np.argsort(rng.random((n, L)), axis=1)
    labels = np.zeros((n, L), np.float32)
    rows = np.nonzero(target >= 0)[0]
    labels[rows, order[rows, target[rows]]] = 1.0  # the true item lands at display position `target`
    lists = RerankLists(np.arange(n), np.zeros((n, 3), np.int64), np.tile(np.arange(L), (n, 1)), labels,
                        np.zeros((n, L, N_FEATURES), np.float32), np.zeros(L, np.int64), "funnel")
    per = order_metrics(lists, order, ks=(5,))
    for key in ("recall@1", "recall@5", "ndcg@5"):
        np.testing.assert_array_equal(per[key], ref[key], err_msg=key)  # one positive: list NDCG = next-item NDCG
