"""The interface every Semantic-ID quantizer implements (RQ-KMeans, RQ-VAE, CoBa).

A quantizer maps item vectors ``x [n_items, d]`` to ``codes [n_items, n_levels]`` (int64, each in
``[0, codebook_size)``), before collision handling. :mod:`thinkrec.tokenize.sids` turns codes into a bijective
item ↔ SID map (dedup digit or reassignment) and the prefix trie used by constrained decoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FitContext:
    """What a quantizer may use besides the item vectors.

    ``train_sequences`` are the **training-split** histories only (CSR ``offsets``/``items``), so collaborative
    quantizers (CoBa) cannot see validation or test targets. ``categories`` (one label per item, optional)
    is only for reporting purity, never for fitting.
    """

    train_offsets: np.ndarray | None = None
    train_items: np.ndarray | None = None
    categories: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Quantizer(ABC):
    """Fit on item vectors, assign codes, encode new items, save/load."""

    name: str = "quantizer"

    @abstractmethod
    def fit(self, x: np.ndarray, context: FitContext | None = None) -> Quantizer:
        """Learn codebooks from ``x [n, d]`` (float32). Returns self."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes ``[n, n_levels]`` (int64) for vectors ``x`` (new items included)."""

    @abstractmethod
    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Approximation of the quantizer's input space from codes, for reconstruction error."""

    @abstractmethod
    def codebooks(self) -> list[np.ndarray]:
        """Per-level codeword matrices ``[codebook_size, code_dim]`` (stage 2 uses them for code embeddings
        and S²GR's cluster supervision)."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write weights as safetensors (+ a JSON sidecar with the config), atomically."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Quantizer:
        """Inverse of :meth:`save`."""

    def fit_encode(self, x: np.ndarray, context: FitContext | None = None) -> np.ndarray:
        """Codes of the fitting items. Quantizers with assignment-time balancing override this so the
        training items get the balanced assignment."""
        return self.fit(x, context).encode(x)
