"""The interface every Semantic-ID quantizer implements (RQ-KMeans, RQ-VAE, CoBa).

A quantizer maps item vectors ``x [n_items, d]`` to ``codes [n_items, n_levels]`` (int64, each in
``[0, codebook_size)``), before collision handling. :mod:`thinkrec.tokenize.sids` turns codes into a bijective
item ↔ SID map (dedup digit or reassignment) and the prefix trie used by constrained decoding.

:class:`Quantizer` holds what every quantizer shares: the config (``config_cls``, keyword overrides), the codes of
the fitting items (``fit_codes_``, returned by :meth:`~Quantizer.fit_encode`), the fit history, and persistence —
a folder with ``weights.safetensors`` (the quantizer's own tensors, :meth:`~Quantizer._tensors`, plus
``fit_codes``) and ``config.json`` (method, config, history, extra metadata), written atomically; the
quantizer restores its own part in :meth:`~Quantizer._restore`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from thinkrec.utils.config import from_dict
from thinkrec.utils.io import atomic_dir, json_default

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


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
    checkpoint_dir: str | Path | None = None  # trained quantizers checkpoint each epoch here (resume after a kill)


def save_artifact(path: str | Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``path/weights.safetensors`` + ``path/config.json`` atomically (a folder swapped in whole)."""
    from safetensors.numpy import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=json_default) + "\n")
    return path


def load_artifact(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a saved quantizer)")
    meta = json.loads((path / CONFIG_FILE).read_text())
    tensors = load_file(str(path / WEIGHTS_FILE)) if (path / WEIGHTS_FILE).exists() else {}
    return tensors, meta


class Quantizer(ABC):
    """Fit on item vectors, assign codes, encode new items, save/load.

    A subclass sets ``name`` (recorded in saved artifacts) and ``config_cls`` (a dataclass), and implements
    ``fit`` (which sets ``fit_codes_``), ``encode``, ``reconstruct``, ``codebooks``, ``fitted`` and the
    persistence hooks ``_tensors`` / ``_restore`` (``_meta`` for extra JSON metadata).
    """

    name: str = "quantizer"
    config_cls: type = object

    def __init__(self, config: Any | None = None, **overrides: Any):
        cfg = config or self.config_cls()
        if overrides:
            cfg = self.config_cls(**{**asdict(cfg), **overrides})
        self.config = cfg
        self.fit_codes_: np.ndarray | None = None  # codes of the fitting items (set by fit)
        self.history: list[dict[str, Any]] = []
        self.fit_seconds: float = 0.0

    # ------------------------------------------------------------------ each quantizer's own part
    @abstractmethod
    def fit(self, x: np.ndarray, context: FitContext | None = None) -> Quantizer:
        """Learn codebooks from ``x [n, d]`` (float32) and set ``fit_codes_``. Returns self."""

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

    @property
    @abstractmethod
    def fitted(self) -> bool:
        """Whether the quantizer holds learned codebooks."""

    @abstractmethod
    def _tensors(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`save` writes (``fit_codes`` is added by the base class)."""

    @abstractmethod
    def _restore(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Inverse of :meth:`_tensors` / :meth:`_meta` on a fresh instance built from the saved config."""

    def _meta(self) -> dict[str, Any]:
        """Extra JSON metadata for :meth:`save` (besides method, config, history and fit_seconds)."""
        return {}

    # ------------------------------------------------------------------ shared
    def fit_encode(self, x: np.ndarray, context: FitContext | None = None) -> np.ndarray:
        """Codes of the fitting items: the assignment ``fit`` made (the balanced one where the quantizer
        balances at assignment time), else ``encode(x)``."""
        self.fit(x, context)
        return self.encode(x) if self.fit_codes_ is None else self.fit_codes_.copy()

    def quantizer_input(self, x: np.ndarray, context: FitContext | None = None) -> np.ndarray:
        """The vectors the quantizer models (``reconstruct`` approximates these): ``x`` itself unless overridden."""
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted")

    def save(self, path: str | Path) -> None:
        """Write weights as safetensors (+ a JSON sidecar with the config), atomically."""
        self._check()
        tensors = self._tensors()
        if self.fit_codes_ is not None:
            tensors["fit_codes"] = self.fit_codes_
        meta = {"method": self.name, "config": asdict(self.config), **self._meta(),
                "history": self.history, "fit_seconds": self.fit_seconds}
        save_artifact(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Inverse of :meth:`save`."""
        tensors, meta = load_artifact(path)
        if meta.get("method") != cls.name:
            raise ValueError(f"{path}: saved method is {meta.get('method')!r}, not {cls.name!r}")
        q = cls(from_dict(cls.config_cls, meta["config"]))
        q._restore(tensors, meta)
        q.fit_codes_ = tensors.get("fit_codes")
        q.history = meta.get("history", [])
        q.fit_seconds = float(meta.get("fit_seconds", 0.0))
        return q
