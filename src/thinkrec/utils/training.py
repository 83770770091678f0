"""Pieces shared by the trainers: parameter groups, the warm-up + cosine schedule, length-bucketed batches,
early stopping on a validation metric, mixed precision."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

#: ``amp`` settings of the trainers: off (float32) | bf16 (forward and loss under bfloat16 autocast)
AMP_MODES = ("off", "bf16")


def autocast(device: str | torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """The forward + loss context for ``amp`` (:data:`AMP_MODES`): ``torch.autocast`` to bfloat16 on the device's
    type, or nothing. The backward runs outside it; parameters and optimiser state stay float32."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (not on biases, norms or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "emb" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` × the peak at step ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def length_bucketed_batches(
    lengths: np.ndarray, rows: np.ndarray, batch_size: int, max_len: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of sequences of similar length, each holding about ``batch_size × mean targets`` targets.

    Rows are sorted by (noisy) length and cut into batches with the target count of a random batch of
    ``batch_size`` rows (many short rows or a few long ones): every target keeps the loss weight it would have
    with random batches, while padding all but disappears.
    """
    targets = np.minimum(lengths[rows] - 1, max_len).astype(np.float64)
    budget = batch_size * float(targets.mean())
    order = np.argsort(targets + rng.random(len(rows)) * 2.0, kind="stable")
    cuts = np.searchsorted(np.cumsum(targets[order]), np.arange(budget, targets.sum(), budget))
    batches = [rows[idx] for idx in np.split(order, np.unique(cuts)) if len(idx)]
    return [batches[i] for i in rng.permutation(len(batches))]


class EarlyStopping:
    """Keeps the best model state by a validation metric (higher is better) and counts epochs without gain."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = -1.0
        self.best_state: dict[str, Any] | None = None
        self.bad = 0

    def update(self, value: float, model: nn.Module) -> bool:
        """Record this epoch's metric; True when it is a new best (the model's state is copied)."""
        if value > self.best:
            self.best, self.bad = value, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return True
        self.bad += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_state": self.best_state, "bad": self.bad}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.best_state, self.bad = state["best"], state["best_state"], state["bad"]
