import numpy as np
import polars as pl
import torch

from thinkrec.baselines.popularity import Popularity
from thinkrec.baselines.sasrec import SASRec, SASRecConfig, train_sasrec
from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import leave_one_out
from thinkrec.eval.protocol import evaluate_full_ranking


def _planted(n_users: int = 300, n_items: int = 40, seed: int = 0) -> Dataset:
    """Each user walks the item ring with a user-specific stride (1 or 2): the next item is determined by
    the last two items, so a sequence model can reach near-perfect recall while popularity cannot."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start, stride, length = rng.integers(0, n_items), rng.integers(1, 3), rng.integers(6, 12)
        rows += [(u, int((start + stride * t) % n_items), t) for t in range(length)]
    return Dataset.from_frames("planted", pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row"))


def test_sasrec_learns_planted_sequential_pattern():
    torch.manual_seed(0)
    split = leave_one_out(_planted())
    cfg = SASRecConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.0, max_len=12, lr=5e-3, batch_size=64, epochs=40,
                       patience=40, warmup_steps=10)
    model, history = train_sasrec(split, cfg, log=lambda m: None)
    sas, _ = evaluate_full_ranking(model.score, split.test, ks=(1, 5), max_len=cfg.max_len)
    pop, _ = evaluate_full_ranking(Popularity.fit(split).score, split.test, ks=(1, 5), max_len=cfg.max_len)
    assert sas["recall@1"] > 0.9, sas
    assert pop["recall@5"] < 0.3
    assert history[-1]["loss"] < history[0]["loss"]


def test_padding_does_not_change_scores_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = SASRecConfig(d_model=16, n_layers=2, n_heads=2, dropout=0.0, max_len=8)
    model = SASRec(20, cfg).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    users = torch.zeros(1, dtype=torch.long)
    # left padding must be invisible: only position embeddings of real items matter, aligned on the right
    torch.testing.assert_close(model.score(users, short), model.score(users, padded), rtol=1e-5, atol=1e-5)
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = SASRec.load(path, cfg, 20).eval()
    torch.testing.assert_close(model.score(users, padded), again.score(users, padded))
    assert model.score(users, padded).shape == (1, 20)


def test_every_loss_learns_the_planted_pattern():
    """Sampled softmax (uniform / in-batch / mixed, with logQ) and gBCE all reach the planted next item."""
    split = leave_one_out(_planted())
    for kw in (dict(loss="sampled", negative_sampling="uniform", negatives=16),
               dict(loss="sampled", negative_sampling="in-batch"),
               dict(loss="sampled", negative_sampling="mixed", negatives=16),
               dict(loss="gbce", negatives=16)):
        torch.manual_seed(0)
        cfg = SASRecConfig(d_model=32, n_layers=1, n_heads=1, dropout=0.0, max_len=12, lr=5e-3, batch_size=64,
                           epochs=40, patience=40, warmup_steps=10, **kw)
        model, _ = train_sasrec(split, cfg, log=lambda m: None)
        m, _ = evaluate_full_ranking(model.score, split.test, ks=(1, 5), max_len=cfg.max_len)
        assert m["recall@5"] > 0.8, (kw, m)


def test_sampled_softmax_and_gbce_match_their_formulas():
    from thinkrec.baselines.sasrec import gbce_loss, sampled_softmax_loss

    torch.manual_seed(0)
    h, w = torch.randn(6, 4), torch.randn(10, 4)
    pos = torch.tensor([1, 3, 3, 7, 0, 9])
    log_q = torch.log_softmax(torch.randn(10), 0)
    # in-batch with logQ: softmax over the batch's distinct targets, logits minus log q
    got = sampled_softmax_loss(h, pos, w, 0, "in-batch", log_q)
    cands = sorted(set(pos.tolist()))
    want = 0.0
    for i in range(6):
        logits = torch.stack([h[i] @ w[c] - log_q[c] for c in cands])
        want += -torch.log_softmax(logits, 0)[cands.index(int(pos[i]))]
    assert torch.allclose(got, want / 6, atol=1e-5)
    # uniform: the positive against the drawn negatives, a negative equal to the positive masked out
    g = torch.Generator().manual_seed(3)
    got = sampled_softmax_loss(h, pos, w, 5, "uniform", None, generator=g)
    neg = torch.randint(10, (5,), generator=torch.Generator().manual_seed(3))
    want = 0.0
    for i in range(6):
        logits = [h[i] @ w[pos[i]]] + [h[i] @ w[n] for n in neg if n != pos[i]]
        want += -torch.log_softmax(torch.stack(logits), 0)[0]
    assert torch.allclose(got, want / 6, atol=1e-5)
    # gBCE with t = 0 is plain BCE (β = 1)
    got = gbce_loss(h, pos, w, 5, 0.0, generator=torch.Generator().manual_seed(3))
    want = 0.0
    for i in range(6):
        want += -torch.nn.functional.logsigmoid(h[i] @ w[pos[i]])
        want += sum(-torch.log1p(-torch.sigmoid(h[i] @ w[n])) for n in neg if n != pos[i])
    assert torch.allclose(got, want / 6, atol=1e-4)


def test_unknown_loss_is_refused_before_training():
    import pytest

    from thinkrec.baselines.sasrec import check_config

    with pytest.raises(ValueError, match="sasrec.loss"):
        check_config(SASRecConfig(loss="bpr"))
    with pytest.raises(ValueError, match="sasrec.negative_sampling"):
        check_config(SASRecConfig(loss="sampled", negative_sampling="hard"))


def test_history_negatives_are_added_once_and_teach_the_model_to_skip_seen_items():
    from thinkrec.baselines.sasrec import sampled_softmax_loss

    torch.manual_seed(0)
    h, w = torch.randn(2, 4), torch.randn(10, 4)
    pos = torch.tensor([1, 3])
    extra = torch.tensor([[5, 3, -1], [1, 6, 6]])  # row 0: 3 is an in-batch candidate; row 1: 1 too, 6 twice
    extra_logits = torch.stack([h[i] @ w[extra[i].clamp_min(0)].T for i in range(2)])
    got = sampled_softmax_loss(h, pos, w, 0, "in-batch", None, extra_items=extra, extra_logits=extra_logits)
    want = 0.0
    for i, cols in enumerate(([1, 3, 5], [1, 3, 6, 6])):  # a repeated history item counts as often as it occurs
        logits = torch.stack([h[i] @ w[c] for c in cols])
        want += -torch.log_softmax(logits, 0)[cols.index(int(pos[i]))]
    assert torch.allclose(got, want / 2, atol=1e-5)

    # planted walks never revisit an item; with 2 uniform negatives the model learns to score its inputs high
    # unless they are negatives
    split = leave_one_out(_planted())
    seen_share = {}
    for flag in (False, True):
        torch.manual_seed(0)
        cfg = SASRecConfig(d_model=32, n_layers=1, n_heads=1, dropout=0.0, max_len=12, lr=5e-3, batch_size=64,
                           epochs=15, patience=15, warmup_steps=10, loss="sampled", negatives=2,
                           history_negatives=flag)
        model, _ = train_sasrec(split, cfg, log=lambda m: None)
        ex = split.test
        tokens = torch.zeros(len(ex), cfg.max_len, dtype=torch.long)
        for i in range(len(ex)):
            hist = ex.history(i)[-cfg.max_len:]
            tokens[i, cfg.max_len - len(hist):] = torch.from_numpy(hist + 1)
        with torch.no_grad():
            top = model.score(torch.zeros(len(ex)), tokens).topk(5).indices.numpy()
        seen_share[flag] = np.mean([np.isin(top[i], ex.history(i)).mean() for i in range(len(ex))])
    assert seen_share[True] < 0.5 * seen_share[False], seen_share


def test_sparse_item_table_takes_the_dense_first_step_and_learns_the_pattern():
    """``sparse_items``: the item table's gradient names only the rows a step reads and LazyAdamW updates those.
    AdamW's first step moves no other row either (zero moments, no decay on embeddings), so the first two steps'
    losses are the dense run's; later, untouched rows keep their moments frozen (lazy Adam) and the run still
    learns the planted pattern. A full-softmax loss is refused."""
    split = leave_one_out(_planted())
    runs = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        cfg = SASRecConfig(d_model=32, n_layers=1, n_heads=1, dropout=0.0, max_len=12, lr=5e-3, batch_size=64,
                           epochs=40, patience=40, warmup_steps=10, loss="sampled", negatives=16, sparse_items=sparse)
        steps: list[dict] = []
        model, _ = train_sasrec(split, cfg, log=lambda m: None, on_step=steps.append)
        assert model.item_emb.sparse is sparse
        runs[sparse] = [s["loss"] for s in steps], evaluate_full_ranking(model.score, split.test, ks=(5,),
                                                                         max_len=cfg.max_len)[0]
    np.testing.assert_allclose(runs[True][0][:2], runs[False][0][:2], rtol=1e-5)
    assert runs[True][1]["recall@5"] > 0.8, runs[True][1]
    import pytest

    from thinkrec.baselines.sasrec import check_config

    with pytest.raises(ValueError, match="sasrec.sparse_items"):
        check_config(SASRecConfig(sparse_items=True))
