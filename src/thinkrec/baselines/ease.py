"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): a linear item × item model in closed form.

Hand-written: the model is the paper's ten-line closed form, ``B = I − P · diag(1 / diag(P))`` with
``P = (XᵀX + λI)⁻¹``, i.e. ``B_ij = −P_ij / P_jj`` off the diagonal and ``B_ii = 0``. ``X`` is the binary user ×
item matrix of the *training* sequences only. A history scores the catalogue as ``multi_hot(history) @ B``.
``B`` is dense (n_items² float32), so :attr:`EASEConfig.max_items` refuses catalogues it would not fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from thinkrec.data.splits import SequenceSplit
from thinkrec.utils.config import from_dict, spec
from thinkrec.utils.io import atomic_dir, read_json, write_json


@dataclass
class EASEConfig:
    l2: float = spec(500.0, gt=0.0)  # the ridge λ added to the Gram matrix's diagonal
    max_items: int = spec(40000, ge=1)  # refuse larger catalogues: B is a dense n_items² matrix


def _solve_device(device: str | torch.device) -> torch.device:
    """Where the float64 inverse runs: CUDA when asked, else the CPU (MPS has no float64)."""
    d = torch.device(device)
    return d if d.type == "cuda" else torch.device("cpu")


class EASE:
    def __init__(self, weights: torch.Tensor, config: EASEConfig):
        if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
            raise ValueError(f"EASE: weights must be square [n_items, n_items] (got {tuple(weights.shape)})")
        self.weights, self.config = weights.float().contiguous(), config

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[0])

    @property
    def device(self) -> torch.device:
        return self.weights.device

    @staticmethod
    def interactions(split: SequenceSplit) -> sp.csr_matrix:
        """The binary user × item matrix ``X`` of the training sequences (repeats count once)."""
        offsets, items = split.train_offsets, split.train_items.astype(np.int64)
        users = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
        x = sp.csr_matrix((np.ones(items.size), (users, items)), shape=(len(offsets) - 1, split.n_items))
        x.sum_duplicates()
        x.data[:] = 1.0
        return x

    @classmethod
    def fit(cls, split: SequenceSplit, config: EASEConfig | None = None, device: str = "cpu") -> EASE:
        """The closed form on ``split``'s training sequences; the inverse runs in float64 (on ``device`` if CUDA)."""
        config = config or EASEConfig()
        n = split.n_items
        if n > config.max_items:
            raise ValueError(
                f"EASE: the catalogue has {n} items, more than candidates.ease.max_items = {config.max_items} "
                f"(B is a dense {n} × {n} matrix: {n * n * 8 / 2**30:.1f} GiB in float64 while fitting); "
                "raise max_items if the memory is there")
        x = cls.interactions(split)
        gram = torch.from_numpy((x.T @ x).toarray()).to(_solve_device(device))  # [n, n] float64
        gram.diagonal().add_(config.l2)
        chol = torch.linalg.cholesky(gram)
        del gram
        p = torch.cholesky_inverse(chol)  # (XᵀX + λI)⁻¹
        del chol
        b = p.div_(-p.diagonal().clone()[None, :])  # B_ij = −P_ij / P_jj
        b.fill_diagonal_(0.0)
        return cls(b.float().to(device), config)

    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] for padded histories ``tokens`` (item id + 1, 0 = padding): ``multi_hot @ B``."""
        tok = tokens.to(self.device).long()
        b = tok.shape[0]
        srt = tok.sort(dim=1).values
        first = torch.ones_like(srt, dtype=torch.bool)
        first[:, 1:] = srt[:, 1:] != srt[:, :-1]
        rows, cols = torch.nonzero((srt > 0) & first, as_tuple=True)  # each history item once
        cols = srt[rows, cols] - 1
        if self.device.type == "cpu":  # sparse × dense: O(history × n) per row, no dense multi-hot product
            hot = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()), (b, self.n_items),
                                          check_invariants=False)
            out = torch.sparse.mm(hot, self.weights)
        else:
            hot = torch.zeros(b, self.n_items, device=self.device)
            hot[rows, cols] = 1.0
            out = hot @ self.weights
        return out.to(tokens.device)

    # ------------------------------------------------------------ persistence
    def save_folder(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_dir(path) as tmp:
            save_file({"weights": self.weights.detach().cpu().contiguous()}, str(tmp / "model.safetensors"))
            write_json(tmp / "config.json", {"model": "ease", "n_items": self.n_items, "config": asdict(self.config)})
        return path

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> EASE:
        path = Path(path)
        meta = read_json(path / "config.json")
        weights = load_file(str(path / "model.safetensors"))["weights"]
        n = int(meta["n_items"])
        if tuple(weights.shape) != (n, n):
            raise ValueError(f"{path / 'model.safetensors'}: weights {tuple(weights.shape)} for {n} items")
        return cls(weights.to(device), from_dict(EASEConfig, meta["config"], where=str(path / "config.json")))
