"""Most-popular baseline: every user gets the training-set item counts as scores."""

from __future__ import annotations

import numpy as np
import torch

from thinkrec.data.splits import SequenceSplit


class Popularity:
    def __init__(self, counts: np.ndarray):
        self.counts = torch.as_tensor(counts, dtype=torch.float32)

    @classmethod
    def fit(cls, split: SequenceSplit) -> Popularity:
        return cls(np.bincount(split.train_items, minlength=split.n_items).astype(np.float32))

    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.counts.to(tokens.device).expand(tokens.shape[0], -1)
