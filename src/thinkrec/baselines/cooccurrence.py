"""Item-to-item co-occurrence: the classic "bought after" candidate source.

From the training sequences, item ``j`` following item ``i`` within ``window`` steps adds ``1 / distance`` to
``C[i, j]`` (and ``backward`` × that to ``C[j, i]``: items bought before also predict). A user's scores are the
rows of ``C`` for their last ``history`` items, each weighted ``decay ** age`` (the last item has age 0), plus a
popularity tie-break far below any co-occurrence, so a cold history still gets a full ranking. One sparse
matrix product per batch (scipy CSR): no users × items matrix is ever held beyond a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file, save_file

from thinkrec.data.splits import SequenceSplit
from thinkrec.utils.config import from_dict, spec
from thinkrec.utils.io import atomic_path, read_json, write_json


@dataclass
class CooccurrenceConfig:
    window: int = spec(3, ge=1)  # pairs up to this many steps apart count
    backward: float = spec(0.5, ge=0.0)  # weight of the reverse direction (j before i)
    history: int = spec(5, ge=1)  # most recent history items whose rows are summed
    decay: float = spec(0.6, ge=0.0, le=1.0)  # weight of a history item = decay ** age


class Cooccurrence:
    def __init__(self, matrix: sp.csr_matrix, popularity: np.ndarray, config: CooccurrenceConfig):
        self.matrix, self.config = matrix.tocsr(), config
        pop = np.asarray(popularity, dtype=np.float64)
        # Tie-break in (0, 1e-3]: below the smallest co-occurrence weight (1 / window × backward ≥ 1e-2).
        self.tie = (1e-3 * pop / max(pop.max(initial=0.0), 1.0)).astype(np.float32)

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def fit(cls, split: SequenceSplit, config: CooccurrenceConfig | None = None) -> Cooccurrence:
        config = config or CooccurrenceConfig()
        n, items, offsets = split.n_items, split.train_items.astype(np.int64), split.train_offsets
        user_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        rows, cols, vals = [], [], []
        for d in range(1, config.window + 1):
            same = user_of[:-d] == user_of[d:]  # pairs d apart inside one user's sequence
            src, dst = items[:-d][same], items[d:][same]
            rows += [src, dst]
            cols += [dst, src]
            vals += [np.full(src.size, 1.0 / d), np.full(src.size, config.backward / d)]
        matrix = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        matrix = matrix.tocsr()  # duplicates summed
        matrix.setdiag(0.0)  # an item does not recommend itself
        matrix.eliminate_zeros()
        return cls(matrix.astype(np.float32), np.bincount(items, minlength=n), config)

    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] for left-padded histories ``tokens`` (item id + 1, 0 = padding)."""
        c = self.config
        tail = tokens[:, -c.history:].cpu().numpy().astype(np.int64)
        b, h = tail.shape
        weight = np.broadcast_to(c.decay ** np.arange(h - 1, -1, -1, dtype=np.float64), (b, h))
        keep = tail > 0
        hist = sp.csr_matrix((weight[keep], (np.nonzero(keep)[0], tail[keep] - 1)), shape=(b, self.n_items))
        scores = np.asarray((hist @ self.matrix).todense(), dtype=np.float32) + self.tie[None]
        return torch.from_numpy(scores).to(tokens.device)

    # ------------------------------------------------------------ persistence
    def save_folder(self, path: str | Path) -> Path:
        path = Path(path)
        m = self.matrix
        with atomic_path(path / "model.safetensors") as tmp:
            save_file({"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int64),
                       "data": m.data.astype(np.float32), "tie": self.tie}, str(tmp))
        write_json(path / "config.json", {"model": "cooc", "n_items": self.n_items, "config": asdict(self.config)})
        return path

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> Cooccurrence:
        path = Path(path)
        meta = read_json(path / "config.json")
        a = load_file(str(path / "model.safetensors"))
        n = int(meta["n_items"])
        if len(a["indptr"]) != n + 1:
            raise ValueError(f"{path / 'model.safetensors'}: indptr has {len(a['indptr'])} entries for {n} items")
        matrix = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(n, n))
        model = cls(matrix, np.zeros(n), from_dict(CooccurrenceConfig, meta["config"], where=str(path / "config.json")))
        model.tie = a["tie"]
        return model
