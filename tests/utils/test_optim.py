"""LazyAdamW and sparse gradient clipping against torch's dense AdamW / clip_grad_norm_ (independent references)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from thinkrec.utils.optim import LazyAdamW, SparseRows, clip_grad_norm


def _pair(sparse: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"emb": nn.Embedding(12, 4, sparse=sparse), "lin": nn.Linear(4, 1)})


def _loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    return (m["lin"](m["emb"](idx)) ** 2).mean()


def test_dense_gradients_follow_adamw_exactly():
    a, b = _pair(False), _pair(False)
    oa = torch.optim.AdamW(a.parameters(), lr=0.05, weight_decay=0.1)
    ob = LazyAdamW(b.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(5):
        idx = torch.randint(0, 12, (7,), generator=torch.Generator().manual_seed(step))
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            _loss(m, idx).backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_sparse_rows_match_dense_adamw_where_looked_up_and_stay_put_elsewhere():
    dense, lazy = _pair(False), _pair(True)
    od = torch.optim.AdamW(dense.parameters(), lr=0.05, weight_decay=0.0)
    ol = LazyAdamW(lazy.parameters(), lr=0.05, weight_decay=0.0)
    idx = torch.tensor([1, 3, 3, 7])  # the same rows every step: lazy and dense moments coincide on them
    before = lazy["emb"].weight.detach().clone()
    for _ in range(6):
        for m, o in ((dense, od), (lazy, ol)):
            o.zero_grad()
            _loss(m, idx).backward()
            o.step()
    assert lazy["emb"].weight.grad.is_sparse
    rows = torch.tensor([1, 3, 7])
    torch.testing.assert_close(lazy["emb"].weight[rows], dense["emb"].weight[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lazy["lin"].weight, dense["lin"].weight, rtol=1e-5, atol=1e-6)
    others = torch.tensor([i for i in range(12) if i not in (1, 3, 7)])
    assert torch.equal(lazy["emb"].weight[others], before[others])
    state = copy.deepcopy(ol.state_dict())  # checkpoints round-trip
    LazyAdamW(lazy.parameters(), lr=0.05).load_state_dict(state)


def test_sparse_clip_matches_dense_clip():
    dense, lazy = _pair(False), _pair(True)
    idx = torch.tensor([0, 2, 2, 5])
    for m in (dense, lazy):
        (100 * _loss(m, idx)).backward()
    nd = nn.utils.clip_grad_norm_(dense.parameters(), 0.5)
    nl = clip_grad_norm(lazy.parameters(), 0.5)
    torch.testing.assert_close(nl, nd)
    torch.testing.assert_close(lazy["emb"].weight.grad.to_dense(), dense["emb"].weight.grad)
    torch.testing.assert_close(lazy["lin"].weight.grad, dense["lin"].weight.grad)


def test_sparse_rows_read_like_the_weight_slice():
    emb = nn.Embedding(10, 3, sparse=True)
    rows = SparseRows(emb, offset=1)
    assert rows.shape == emb.weight[1:].shape
    idx = torch.tensor([0, 4, 8])
    assert torch.equal(rows[idx], emb.weight[1:][idx])
    rows[idx].sum().backward()
    assert emb.weight.grad.is_sparse
