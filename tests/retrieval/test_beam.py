import numpy as np
import pytest
import torch

from thinkrec.retrieval import GenerativeRetriever, RetrieverConfig, beams_to_items, constrained_beam_search
from thinkrec.retrieval.clusters import code_clusters
from thinkrec.tokenize.sids import SIDMap, SIDTrie
from thinkrec.utils.config import check_valid

torch.set_num_threads(1)


def _sidmap(n_items: int, n_levels: int = 2, k: int = 4, seed: int = 0) -> SIDMap:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, k, size=(n_items, n_levels))
    return SIDMap(raw, codebook_size=k, strategy="dedup")


def _tiny(sm: SIDMap, thinking=False, mode="item", dropout=0.1, **kw) -> GenerativeRetriever:
    cfg = RetrieverConfig(d_model=32, n_enc_layers=1, n_dec_layers=1, n_heads=2, ffn=64, dropout=dropout,
                          max_len=8, input_mode=mode, thinking=thinking, **kw)
    return GenerativeRetriever(torch.from_numpy(sm.codes), sm.radix, cfg)


def _histories(n_items: int, n_users: int, t: int, seed: int = 1) -> torch.Tensor:
    """Left-padded item tokens (item + 1, 0 = pad) of random length."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, n_items + 1, size=(n_users, t))
    for u in range(n_users):
        tokens[u, : rng.integers(0, t)] = 0
    return torch.from_numpy(tokens)


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("mode", ["code", "item"])
def test_constrained_beams_are_valid(thinking, mode):
    torch.manual_seed(0)
    sm = _sidmap(40)
    assert sm.n_unique_tuples < sm.n_items  # collisions → dedup digit level
    trie = SIDTrie.from_sidmap(sm)
    model = _tiny(sm, thinking, mode)
    tokens = _histories(sm.n_items, 5, 6)
    tokens[0] = 0  # a user with no history still decodes
    res = constrained_beam_search(model, tokens, trie, beam_size=8, return_thoughts=True)
    assert res.codes.shape == (5, 8, sm.sid_length) and res.scores.shape == (5, 8)
    assert (res.thoughts is not None) == thinking
    assert model.training  # mode restored
    assert torch.isfinite(res.scores).all()  # 40 items ≥ 8 beams
    items = beams_to_items(sm, res.codes, res.scores)
    assert (items >= 0).all()
    assert (res.scores[:, 1:] <= res.scores[:, :-1]).all()
    for row in items.tolist():
        assert len(set(row)) == len(row)
    assert trie.is_valid(res.codes.reshape(-1, sm.sid_length)).all()


@pytest.mark.parametrize("thinking", [False, True])
def test_beam_larger_than_catalogue_returns_all_items(thinking):
    torch.manual_seed(0)
    sm = _sidmap(13, seed=3)
    trie = SIDTrie.from_sidmap(sm)
    res = constrained_beam_search(_tiny(sm, thinking), _histories(13, 3, 5), trie, beam_size=20)
    items = beams_to_items(sm, res.codes, res.scores)
    valid = torch.isfinite(res.scores)
    assert (valid.sum(1) == 13).all()
    assert (valid[:, :13]).all() and not valid[:, 13:].any()
    assert (res.codes[:, 13:] == -1).all() and (items[:, 13:] == -1).all()
    for u in range(3):
        assert sorted(items[u, :13].tolist()) == list(range(13))
    assert (res.scores[valid] <= 1e-6).all()  # summed log-probs of masked, unrenormalised distributions


def test_numpy_beams_to_items():
    sm = _sidmap(10)
    codes = np.stack([sm.codes[[3, 1]], np.full((2, sm.sid_length), -1)])
    scores = np.array([[0.0, -1.0], [-np.inf, -np.inf]])
    assert beams_to_items(sm, codes, scores).tolist() == [[3, 1], [-1, -1]]


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("mode", ["code", "item"])
def test_beam_scores_match_teacher_forcing(thinking, mode):
    """The KV-cached beam search and the teacher-forced pass agree on every beam's log-probability."""
    torch.manual_seed(0)
    sm = _sidmap(30, seed=2)
    model = _tiny(sm, thinking, mode).eval()
    tokens = _histories(30, 4, 5)
    res = constrained_beam_search(model, tokens, SIDTrie.from_sidmap(sm), beam_size=6)
    with torch.no_grad():
        memory, mmask, _ = model.encode(tokens)
        out = model.forward_targets(memory, mmask, res.codes, torch.ones(4, 6, dtype=torch.bool))
    flat = res.codes.reshape(-1, sm.sid_length)
    tf = sum(model.level_log_probs(lv, lg, flat[:, :lv]).gather(1, flat[:, lv : lv + 1])[:, 0] for lv, lg in enumerate(out.logits))
    torch.testing.assert_close(res.scores.reshape(-1), tf, atol=1e-4, rtol=1e-4)


def test_losses_and_gradients_of_every_s2gr_part():
    torch.manual_seed(0)
    sm = _sidmap(20, k=8)
    clusters = code_clusters([np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)] * 2, sm.radix, 3)
    assert (clusters[:2, :8] >= 0).all() and (clusters[2] == -1).all()  # dedup level has no codebook
    tokens = _histories(20, 6, 5)
    targets = torch.cat([tokens[:, 1:], torch.randint(1, 21, (6, 1))], 1) * (tokens > 0)
    for thinking in (False, True):
        model = GenerativeRetriever(torch.from_numpy(sm.codes), sm.radix,
                                    RetrieverConfig(d_model=32, n_enc_layers=1, n_dec_layers=2, n_heads=2, ffn=64,
                                                    max_len=8, thinking=thinking), clusters)
        parts = model.losses(tokens, targets)
        levels = {f"rec_l{i + 1}" for i in range(sm.sid_length)}
        assert set(parts) == ({"loss", "rec", "item", "align", "nce", "reg"} if thinking else {"loss", "rec", "item"}) | levels
        assert all(torch.isfinite(v) for v in parts.values())
        parts["loss"].backward()
        g = model.think_pos.grad
        assert (g is not None and g.abs().sum() > 0) == thinking
        if thinking:
            assert model.aux_query.grad.abs().sum() > 0


def test_causal_training_does_not_see_the_future():
    """Position g's loss must not depend on history items after g."""
    torch.manual_seed(0)
    sm = _sidmap(20)
    model = _tiny(sm, thinking=True, dropout=0.0)
    tokens = torch.tensor([[3, 5, 7, 9, 11]])
    targets = torch.tensor([[5, 7, 9, 11, 2]])
    only_first = targets * torch.tensor([[1, 0, 0, 0, 0]])
    a = model.losses(tokens, only_first)["rec"]
    changed = tokens.clone()
    changed[0, 2:] = torch.tensor([1, 2, 4])
    b = model.losses(changed, only_first)["rec"]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("thinking", [False, True])
def test_dense_rescoring_reorders_the_beams_only(thinking):
    from thinkrec.retrieval import GenerativeScorer

    torch.manual_seed(0)
    sm = _sidmap(40)
    model = _tiny(sm, thinking).eval()
    tokens = _histories(sm.n_items, 6, 6)
    pure = GenerativeScorer(model, sm, beam_size=8)
    hybrid = GenerativeScorer(model, sm, beam_size=8, dense_weight=2.0)
    with torch.no_grad():
        p, h = pure.score(None, tokens), hybrid.score(None, tokens)
        # independent computation: encoder state at the last position · item table, log-softmax over all items
        memory, _, _ = model.encode(tokens)
        logits = memory[:, -1] @ model.item_table().T
        dense = torch.log_softmax(logits, -1)
    assert torch.equal(torch.isfinite(p), torch.isfinite(h))  # the same candidates: the beams
    ok = torch.isfinite(p)
    # the re-score uses the logit, i.e. the log-softmax plus the user's log-partition: the same order per user
    shift = 2.0 * torch.logsumexp(logits, -1, keepdim=True).expand_as(h)
    assert torch.allclose(h[ok], (p + 2.0 * dense + shift)[ok], atol=1e-4)
    exact = torch.where(ok, p + 2.0 * dense, torch.full_like(p, float("-inf")))
    assert torch.equal(h.argsort(dim=1, descending=True, stable=True)[:, :8], exact.argsort(dim=1, descending=True, stable=True)[:, :8])
    rec = hybrid.recommend(tokens, 8)
    assert (np.diff(rec.scores, axis=1) <= 1e-6).all()  # best first after re-scoring
    beam_items = beams_to_items(sm, rec.beams.codes, rec.beams.scores).numpy()
    assert np.array_equal(np.take_along_axis(beam_items, rec.beam_index, 1), rec.items)
    with pytest.raises(ValueError, match="item head"):
        GenerativeScorer(_tiny(sm, thinking, item_loss_weight=0.0), sm, dense_weight=1.0)


def test_item_logits_and_sampled_item_loss():
    torch.manual_seed(0)
    sm = _sidmap(40)
    model = _tiny(sm, item_negatives=16)
    state = torch.randn(5, 32)
    items = torch.randint(0, 40, (5, 7))
    full = state @ model.item_table().T  # independent: every item's logit, then pick
    assert torch.allclose(model.item_logits(state, items), full.gather(1, items), atol=1e-5)
    assert torch.allclose(model.item_rows(items[0]), model.item_table()[items[0]])
    # a tiny model with the sampled item head learns a planted next item (history ending in i → i + 1)
    tokens = torch.randint(1, 40, (64, 6))
    targets = torch.zeros_like(tokens)
    targets[:, -1] = tokens[:, -1] % 40 + 1  # token of item (last item + 1) mod 40
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        parts = model.losses(tokens, targets)
        first = first if first is not None else float(parts["item"].detach())
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        top = model.item_scores(tokens).argmax(1)
    assert float(parts["item"]) < 0.5 * first
    assert float((top == targets[:, -1] - 1).float().mean()) > 0.8


def test_sparse_item_grad_learns_with_lazy_adamw():
    """``sparse_item_grad``: the item embedding's gradient names only the rows looked up (history items, targets,
    the sampled negatives) and LazyAdamW updates those rows; the planted next item is still learnt."""
    from thinkrec.utils.optim import LazyAdamW, clip_grad_norm

    torch.manual_seed(0)
    sm = _sidmap(40)
    model = _tiny(sm, item_negatives=16, sparse_item_grad=True, dropout=0.0)
    tokens = torch.randint(1, 40, (64, 6))
    targets = torch.zeros_like(tokens)
    targets[:, -1] = tokens[:, -1] % 40 + 1
    opt = LazyAdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(60):
        parts = model.losses(tokens, targets)
        opt.zero_grad()
        parts["loss"].backward()
        grad = model.item_emb.weight.grad
        assert grad.is_sparse and set(grad.coalesce().indices()[0].tolist()) <= set(range(40))
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        top = model.item_scores(tokens).argmax(1)
    assert float((top == targets[:, -1] - 1).float().mean()) > 0.8
    with pytest.raises(ValueError, match="sparse_item_grad"):
        check_valid(RetrieverConfig(sparse_item_grad=True, item_loss_weight=1.0), "retrieval.model")


def test_tuned_dense_weight_scores_match_the_full_ranking_protocol():
    from thinkrec.data.splits import EvalExamples
    from thinkrec.eval.protocol import evaluate_full_ranking
    from thinkrec.retrieval import GenerativeScorer
    from thinkrec.retrieval.inference import tune_dense_weight

    torch.manual_seed(0)
    sm = _sidmap(40)
    model = _tiny(sm).eval()
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 7, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ex = EvalExamples(np.arange(60), offsets, rng.integers(0, 40, size=offsets[-1]), rng.integers(0, 40, size=60))
    best, ndcg = tune_dense_weight(model, sm, ex, beam_size=8, grid=(0.0, 1.0, 3.0), max_len=8, batch_size=16)
    for w in (0.0, 1.0, 3.0):
        m, _ = evaluate_full_ranking(GenerativeScorer(model, sm, 8, w).score, ex, ks=(10,), max_len=8)
        assert ndcg[w] == pytest.approx(m["ndcg@10"], abs=1e-6)
    assert ndcg[best] == max(ndcg.values())
