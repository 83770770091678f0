import numpy as np
import pytest
import torch

from thinkrec.retrieval import GenerativeRetriever, RetrieverConfig, beams_to_items, constrained_beam_search
from thinkrec.tokenize.sids import SIDMap, SIDTrie

torch.set_num_threads(1)


def _sidmap(n_items: int, n_levels: int = 2, k: int = 4, seed: int = 0) -> SIDMap:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, k, size=(n_items, n_levels))
    return SIDMap(raw, codebook_size=k, strategy="dedup")


def _tiny(radix, thinking=False, mode="code", dropout=0.1) -> GenerativeRetriever:
    cfg = RetrieverConfig(d_model=32, n_enc_layers=1, n_dec_layers=1, n_heads=2, ffn=64, dropout=dropout,
                          max_len=8, input_mode=mode, thinking=thinking)
    return GenerativeRetriever(radix, cfg)


def _histories(sidmap: SIDMap, n_users: int, t: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, sidmap.n_items, size=(n_users, t))
    mask = np.ones((n_users, t), dtype=bool)
    for u in range(n_users):  # left padding of random length (at least one real item)
        mask[u, : rng.integers(0, t)] = False
    return torch.from_numpy(sidmap.codes[items]), torch.from_numpy(mask)


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("mode", ["code", "item"])
def test_constrained_beams_are_valid(thinking, mode):
    torch.manual_seed(0)
    sm = _sidmap(40)
    assert sm.n_unique_tuples < sm.n_items  # collisions → dedup digit level
    trie = SIDTrie.from_sidmap(sm)
    model = _tiny(sm.radix, thinking, mode)
    hist, mask = _histories(sm, 5, 6)
    mask[0] = False  # a user with no history still decodes
    memory, mmask = model.encode(hist, mask)
    codes, scores = constrained_beam_search(model, memory, mmask, trie, beam_size=8)
    assert codes.shape == (5, 8, sm.sid_length) and scores.shape == (5, 8)
    assert model.training  # mode restored
    assert torch.isfinite(scores).all()  # 40 items ≥ 8 beams
    items = beams_to_items(sm, codes, scores)
    assert items.shape == (5, 8)
    assert (items >= 0).all()
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    for row in items.tolist():
        assert len(set(row)) == len(row)
    assert trie.is_valid(codes.reshape(-1, sm.sid_length)).all()


@pytest.mark.parametrize("thinking", [False, True])
def test_beam_larger_than_catalogue_returns_all_items(thinking):
    torch.manual_seed(0)
    sm = _sidmap(13, seed=3)
    trie = SIDTrie.from_sidmap(sm)
    model = _tiny(sm.radix, thinking)
    hist, mask = _histories(sm, 3, 5)
    memory, mmask = model.encode(hist, mask)
    codes, scores = constrained_beam_search(model, memory, mmask, trie, beam_size=20)
    items = beams_to_items(sm, codes, scores)
    valid = torch.isfinite(scores)
    assert (valid.sum(1) == 13).all()
    assert (valid[:, :13]).all() and not valid[:, 13:].any()
    assert (codes[:, 13:] == -1).all() and (items[:, 13:] == -1).all()
    for u in range(3):
        assert sorted(items[u, :13].tolist()) == list(range(13))
    # Accumulated log-probs of (unrenormalised) masked distributions: never positive.
    assert (scores[valid] <= 1e-6).all()


def test_numpy_beams_to_items():
    sm = _sidmap(10)
    codes = np.stack([sm.codes[[3, 1]], np.full((2, sm.sid_length), -1)])
    scores = np.array([[0.0, -1.0], [-np.inf, -np.inf]])
    assert beams_to_items(sm, codes, scores).tolist() == [[3, 1], [-1, -1]]


def test_loss_shapes_and_thinking_gradients():
    torch.manual_seed(0)
    sm = _sidmap(20)
    hist, mask = _histories(sm, 4, 5)
    target = torch.from_numpy(sm.codes[[0, 5, 7, 19]])
    for thinking in (False, True):
        model = _tiny(sm.radix, thinking)
        loss = model.loss(hist, mask, target)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        g = model.think_pos.grad
        assert (g is not None and g.abs().sum() > 0) == thinking


@pytest.mark.parametrize(("mode", "thinking", "n_dec_layers"), [("item", False, 1), ("item", True, 1), ("code", False, 2)])
def test_planted_successor_is_learned(mode, thinking, n_dec_layers):
    """History ending in item i → next item (i + 1) mod n; beam search must recover it."""
    torch.manual_seed(0)
    n, hl = 24, 4
    sm = _sidmap(n, seed=5)
    trie = SIDTrie.from_sidmap(sm)
    cfg = RetrieverConfig(d_model=32, n_enc_layers=1, n_dec_layers=n_dec_layers, n_heads=2 if mode == "item" else 4,
                          ffn=64, dropout=0.0, max_len=8, input_mode=mode, thinking=thinking)
    model = GenerativeRetriever(sm.radix, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    codes_t = torch.from_numpy(sm.codes)
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(64, hl, dtype=torch.bool)
    for _ in range(300):
        items = torch.randint(0, n, (64, hl), generator=gen)
        loss = model.loss(codes_t[items], mask, codes_t[(items[:, -1] + 1) % n])
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = torch.arange(n)
    items = torch.cat([torch.randint(0, n, (n, hl - 1), generator=gen), last[:, None]], 1)
    memory, mmask = model.encode(codes_t[items], torch.ones(n, hl, dtype=torch.bool))
    codes, scores = constrained_beam_search(model, memory, mmask, trie, beam_size=5)
    top1 = beams_to_items(sm, codes, scores)[:, 0]
    acc = (top1 == (last + 1) % n).float().mean().item()
    assert acc >= 0.9, (acc, loss.item())


@pytest.mark.parametrize("thinking", [False, True])
def test_beam_scores_match_teacher_forcing(thinking):
    torch.manual_seed(0)
    sm = _sidmap(30, seed=2)
    model = _tiny(sm.radix, thinking).eval()
    hist, mask = _histories(sm, 4, 5)
    memory, mmask = model.encode(hist, mask)
    codes, scores = constrained_beam_search(model, memory, mmask, SIDTrie.from_sidmap(sm), beam_size=6)
    with torch.no_grad():
        for j in range(6):
            logits = model.code_logits(memory, mmask, codes[:, j])
            tf = sum(torch.log_softmax(lg, -1).gather(1, codes[:, j, lv : lv + 1])[:, 0] for lv, lg in enumerate(logits))
            torch.testing.assert_close(scores[:, j], tf, atol=1e-4, rtol=1e-4)
