"""Most-popular baseline: every user gets the training-set item counts as scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from thinkrec.data.splits import SequenceSplit
from thinkrec.utils.io import atomic_path, write_json


class Popularity:
    def __init__(self, counts: np.ndarray):
        self.counts = torch.as_tensor(counts, dtype=torch.float32)

    @classmethod
    def fit(cls, split: SequenceSplit) -> Popularity:
        return cls(np.bincount(split.train_items, minlength=split.n_items).astype(np.float32))

    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.counts.to(tokens.device).expand(tokens.shape[0], -1)

    def save_folder(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path / "model.safetensors") as tmp:
            save_file({"counts": self.counts.numpy()}, str(tmp))
        write_json(path / "config.json", {"model": "popularity", "n_items": int(self.counts.shape[0])})
        return path

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> Popularity:
        return cls(load_file(str(Path(path) / "model.safetensors"))["counts"])
