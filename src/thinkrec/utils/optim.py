"""AdamW with lazy row updates for embedding tables that get sparse gradients.

At a million items a dense AdamW step touches every row of the item table (and its two moment buffers) although
a batch looks up a few thousand rows: 64M parameters per SASRec step, 0.74 s instead of 0.06 s on 2 CPU cores.
An ``nn.Embedding(..., sparse=True)`` gives a sparse gradient; :class:`LazyAdamW` updates only the rows it names
(lazy Adam, as TensorFlow's ``LazyAdam`` and torch's ``SparseAdam``: a row's moments decay only in steps that look
it up), and runs plain ``torch.optim.AdamW`` on every dense gradient, so with no sparse parameter it *is* AdamW.
One optimizer keeps the schedulers, checkpoints and ``DistributedDataParallel`` code of the trainers unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


class LazyAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW``; parameters whose gradient is sparse get a lazy (row-wise) AdamW update."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        sparse = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for _, p in sparse]
        for _, p in sparse:
            p.grad = None  # AdamW skips parameters without a gradient
        try:
            loss = super().step(closure)
        finally:
            for (_, p), g in zip(sparse, grads, strict=True):
                p.grad = g
        for (group, p), grad in zip(sparse, grads, strict=True):
            self._sparse_step(group, p, grad)
        return loss

    def _sparse_step(self, group: dict, p: torch.Tensor, grad: torch.Tensor) -> None:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if rows.numel() == 0:
            return
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        m = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
        v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"][rows] = m
        state["exp_avg_sq"][rows] = v
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        update = (m / bias1) / (v.div(bias2).sqrt_().add_(eps))
        new = p[rows]
        if wd:
            new.mul_(1 - lr * wd)
        p[rows] = new.sub_(update, alpha=lr)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_`` that also takes sparse gradients (their values count once per row)."""
    params = [p for p in parameters if p.grad is not None]
    dense = [p for p in params if not p.grad.is_sparse]
    sparse = [p for p in params if p.grad.is_sparse]
    if not sparse:
        return nn.utils.clip_grad_norm_(dense, max_norm)
    for p in sparse:
        p.grad = p.grad.coalesce()
    norms = [torch.linalg.vector_norm(p.grad) for p in dense] + [torch.linalg.vector_norm(p.grad.values()) for p in sparse]
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in dense:
        p.grad.mul_(scale.to(p.grad.device))
    for p in sparse:
        p.grad.mul_(scale.to(p.grad.device))
    return total


class SparseRows:
    """Rows of an embedding table (item ``i`` = row ``i + offset``) read with sparse gradients: ``rows[idx]``
    and ``rows.shape`` as for the dense weight slice, so a loss written for a weight matrix takes it unchanged."""

    def __init__(self, embedding: nn.Embedding, offset: int = 0):
        self.embedding, self.offset = embedding, offset

    @property
    def shape(self) -> torch.Size:
        n, d = self.embedding.weight.shape
        return torch.Size((n - self.offset, d))

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx + self.offset, self.embedding.weight, sparse=True)

