"""CoBa RQ-VAE (S²GR): collaborative and balanced codebooks, on top of :class:`~thinkrec.tokenize.rqvae.RQVAE`.

Same architecture, loss and collapse switches as the RQ-VAE, plus three independent switches:

* ``collaborative`` — the quantizer input is ``H_align`` instead of the content vectors ``X``. A co-occurrence
  graph ``A`` is built from the **training** sequences only (``FitContext.train_offsets/train_items``): two items
  at distance ``1 … window−1`` inside one user's sequence co-occur, ``A_ij`` = count (symmetric, no self-loops).
  ``Â = D^-1/2 A D^-1/2``; an item without training co-occurrences gets a self-loop (``Â_ii = 1``) so its
  ``H_align`` equals its content vector — the same treatment :meth:`CoBa.encode` gives new items.
  ``H(0) = X``, ``H(k) = (1−α) Â H(k−1) + α X``, ``H_align = Σ_{k=0..K} β_k H(k)`` with
  ``β_k = α(1−α)^k / Σ_j α(1−α)^j``. Nothing is trained for this step (scipy.sparse products).
* ``uniformity`` — repulsion between distinct codewords of a level closer than ``uniformity_margin`` × the
  level's mean pairwise codeword distance (detached): ``Σ_{i<j} relu(1 − d_ij / m)² / K``, weight
  ``uniformity_weight``.
* ``load_balance`` — usage-aware assignment: to each code's squared distance add
  ``balance_strength · s_l · min(K · u_k, balance_clip)``, where ``u_k`` is the code's EMA usage share
  (decay ``usage_ema``, initialised uniform) and ``s_l`` an EMA of the level's mean gap between the second-nearest
  and nearest code (so the strength is scale-free: 1 ≈ one typical assignment margin per uniform share).
  Assignment is *online* in chunks of ``balance_chunk`` rows: each chunk sees the usage share of the EMA prior
  (worth one chunk) plus the rows already assigned — in every training batch, and after training for the fitting
  items (one pass over a seeded random order; :meth:`CoBa.fit_encode` returns this assignment). A one-shot
  assignment of many rows against one usage vector is avoided on purpose: with a steep penalty all marginal rows
  flip to the same under-used codes at once, and the pure assignment oscillates instead of balancing. The final
  usage shares and scale are frozen and saved; :meth:`CoBa.encode` applies them to new items when
  ``balance_at_encode``.

Note on :meth:`CoBa.encode`: new items have no training co-occurrences, so their content vector *is* their
aligned vector. ``encode`` therefore quantizes its input as given; for the fitting items use the codes returned by
:meth:`fit_encode` (or ``encode(propagate(x, context))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from thinkrec.tokenize.base import FitContext
from thinkrec.tokenize.rqvae import RQVAE, RQVAEConfig
from thinkrec.utils.config import spec


@dataclass
class CoBaConfig(RQVAEConfig):
    # ---- collaborative alignment of the input
    collaborative: bool = True
    cooc_window: int = spec(3, ge=2)  # items at distance 1 … window−1 in a training sequence co-occur
    alpha: float = spec(0.2, gt=0.0, le=1.0)  # restart weight α of the propagation (smaller = more collaborative smoothing)
    prop_hops: int = spec(3, ge=0)  # K: H(0) … H(K)
    # ---- uniformity (codeword repulsion)
    uniformity: bool = True
    uniformity_weight: float = spec(0.1, ge=0.0)
    uniformity_margin: float = spec(0.5, ge=0.0)  # fraction of the level's mean pairwise codeword distance
    # ---- usage-aware load balancing
    load_balance: bool = True
    balance_strength: float = spec(1.0, ge=0.0)
    balance_clip: float = spec(4.0, gt=0.0)  # penalty term is capped at balance_clip × the uniform-usage value
    usage_ema: float = spec(0.95, ge=0.0, lt=1.0)
    balance_chunk: int = spec(64, ge=1)  # rows per chunk of the online balanced assignment (training batches, final pass)
    balance_at_encode: bool = True

    # ranges (cooc_window ≥ 2, alpha in (0, 1], prop_hops ≥ 0, …) are checked with RQVAEConfig's in __post_init__


# ---------------------------------------------------------------------------------------------- graph
def cooccurrence_graph(offsets: np.ndarray, items: np.ndarray, n_items: int, window: int = 3) -> sp.csr_matrix:
    """Symmetric co-occurrence counts ``[n_items, n_items]`` of items within ``window`` consecutive positions."""
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"training items must be in [0, {n_items}); got [{items.min()}, {items.max()}]")
    lengths = np.diff(offsets)
    user_of = np.repeat(np.arange(lengths.size), lengths)
    rows, cols = [], []
    for delta in range(1, window):
        if delta >= items.size:
            break
        same = user_of[delta:] == user_of[:-delta]
        a, b = items[:-delta][same], items[delta:][same]
        keep = a != b
        rows += [a[keep], b[keep]]
        cols += [b[keep], a[keep]]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    a = sp.coo_matrix((np.ones(r.size, dtype=np.float64), (r, c)), shape=(n_items, n_items)).tocsr()
    a.sum_duplicates()
    return a


def normalized_adjacency(a: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2``, with a self-loop for items that have no co-occurrence (they keep their content)."""
    deg = np.asarray(a.sum(1)).ravel()
    inv = np.zeros_like(deg)
    nz = deg > 0
    inv[nz] = deg[nz] ** -0.5
    d = sp.diags(inv)
    a_hat = (d @ a @ d).tocsr()
    return (a_hat + sp.diags((~nz).astype(np.float64))).tocsr()


def propagate(x: np.ndarray, a_hat: sp.csr_matrix, alpha: float, hops: int) -> np.ndarray:
    """``H_align = Σ_k β_k H(k)``, ``H(k) = (1−α) Â H(k−1) + α X`` (see the module docstring)."""
    x64 = np.asarray(x, dtype=np.float64)
    weights = np.array([alpha * (1 - alpha) ** k for k in range(hops + 1)])
    weights /= weights.sum()
    h = x64
    out = weights[0] * h
    for k in range(1, hops + 1):
        h = (1 - alpha) * (a_hat @ h) + alpha * x64
        out += weights[k] * h
    return out.astype(np.float32)


def collaborative_align(x: np.ndarray, context: FitContext, window: int = 3, alpha: float = 0.2, hops: int = 3) -> np.ndarray:
    """``H_align`` of ``x`` (rows = item ids) from the training sequences in ``context``."""
    if context is None or context.train_offsets is None or context.train_items is None:
        raise ValueError("collaborative alignment needs FitContext.train_offsets / train_items (training split)")
    a = cooccurrence_graph(context.train_offsets, context.train_items, x.shape[0], window)
    return propagate(x, normalized_adjacency(a), alpha, hops)


# ---------------------------------------------------------------------------------------------- quantizer
class CoBa(RQVAE):
    """CoBa RQ-VAE (S²GR). ``fit_encode`` returns the balanced codes of the fitting items."""

    name = "coba"
    config_cls = CoBaConfig
    config: CoBaConfig

    def __init__(self, config: CoBaConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        L, K = self.config.n_learned, self.config.codebook_size
        self.usage = torch.full((L, K), 1.0 / K)
        self.dist_scale = torch.zeros(L)
        self.final_usage = torch.full((L, K), 1.0 / K)
        self.final_scale = torch.zeros(L)
        self._final_ready = False

    def propagate(self, x: np.ndarray, context: FitContext | None) -> np.ndarray:
        """The quantizer input for ``x``: ``H_align`` when ``collaborative``, else ``x``."""
        cfg = self.config
        if not cfg.collaborative:
            return np.ascontiguousarray(x, dtype=np.float32)
        return collaborative_align(x, context, cfg.cooc_window, cfg.alpha, cfg.prop_hops)  # type: ignore[arg-type]

    def quantizer_input(self, x: np.ndarray, context: FitContext | None = None) -> np.ndarray:
        """``H_align`` (what ``reconstruct`` approximates and ``fit_encode`` quantized); same as :meth:`propagate`."""
        return self.propagate(x, context)

    # ------------------------------------------------------------------ hooks
    def _prepare_input(self, x: np.ndarray, context: FitContext | None) -> np.ndarray:
        L, K = self.config.n_learned, self.config.codebook_size
        dev = self.config.device
        self.usage = torch.full((L, K), 1.0 / K, device=dev)
        self.dist_scale = torch.zeros(L, device=dev)
        self._final_ready = False
        return self.propagate(x, context)

    def _penalty(self, level: int, usage: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return cfg.balance_strength * scale * (usage * cfg.codebook_size).clamp(max=cfg.balance_clip)

    def _online_assign(
        self, level: int, d: torch.Tensor, prior: torch.Tensor, scale: torch.Tensor, order: torch.Tensor | None
    ) -> torch.Tensor:
        """Assign rows of ``d`` chunk by chunk (in ``order``), each chunk penalised by the usage share of the
        prior (worth one chunk) plus the rows assigned so far."""
        n, chunk = d.shape[0], max(1, self.config.balance_chunk)
        counts = prior * min(chunk, n)
        c = torch.empty(n, dtype=torch.long, device=d.device)
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n), device=d.device) if order is None else order[start : start + chunk]
            ci = (d[idx] + self._penalty(level, counts / counts.sum(), scale)).argmin(1)
            c[idx] = ci
            counts = counts + torch.bincount(ci, minlength=d.shape[1]).to(counts.dtype)
        return c

    def _assign(self, level: int, d: torch.Tensor, train: bool, final: bool) -> torch.Tensor:
        cfg = self.config
        if not cfg.load_balance:
            return d.argmin(1)
        K = cfg.codebook_size
        if train:
            gap = _gap(d)
            s = self.dist_scale[level]
            self.dist_scale[level] = gap if float(s) == 0.0 else cfg.usage_ema * s + (1 - cfg.usage_ema) * gap
            c = self._online_assign(level, d, self.usage[level], self.dist_scale[level], order=None)
            frac = torch.bincount(c, minlength=K).to(d.dtype) / c.numel()
            self.usage[level] = cfg.usage_ema * self.usage[level] + (1 - cfg.usage_ema) * frac
            return c
        if final:
            scale = _gap(d)
            gen = torch.Generator().manual_seed(cfg.seed + 17 + level)
            order = torch.randperm(d.shape[0], generator=gen).to(d.device)
            c = self._online_assign(level, d, self.usage[level], scale, order=order)
            self.final_usage[level] = torch.bincount(c, minlength=K).to(d.dtype) / c.numel()
            self.final_scale[level] = scale
            self._final_ready = True
            return c
        if cfg.balance_at_encode and self._final_ready:
            return (d + self._penalty(level, self.final_usage[level], self.final_scale[level])).argmin(1)
        return d.argmin(1)

    def _extra_loss(self) -> tuple[torch.Tensor | None, dict[str, float]]:
        cfg, net = self.config, self.net
        if not cfg.uniformity or cfg.uniformity_weight <= 0:
            return None, {}
        assert net is not None
        total = None
        for book in net.codebooks:
            total_l = uniformity_loss(book, cfg.uniformity_margin)
            total = total_l if total is None else total + total_l
        assert total is not None
        return cfg.uniformity_weight * total, {"uniformity": float(total.detach())}

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            **super()._tensors(),
            "coba.usage": self.usage.cpu().numpy(),
            "coba.dist_scale": self.dist_scale.cpu().numpy(),
            "coba.final_usage": self.final_usage.cpu().numpy(),
            "coba.final_scale": self.final_scale.cpu().numpy(),
            "coba.final_ready": np.array([int(self._final_ready)], dtype=np.int64),
        }

    def _restore(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        super()._restore(tensors, meta)
        dev = self.config.device
        self.usage = torch.from_numpy(tensors["coba.usage"].copy()).to(dev)
        self.dist_scale = torch.from_numpy(tensors["coba.dist_scale"].copy()).to(dev)
        self.final_usage = torch.from_numpy(tensors["coba.final_usage"].copy()).to(dev)
        self.final_scale = torch.from_numpy(tensors["coba.final_scale"].copy()).to(dev)
        self._final_ready = bool(tensors["coba.final_ready"][0])


def _gap(d: torch.Tensor) -> torch.Tensor:
    """Mean gap between the second-nearest and the nearest code's squared distance (penalty scale)."""
    two = torch.topk(d, 2, dim=1, largest=False).values
    return (two[:, 1] - two[:, 0]).mean()


def uniformity_loss(book: torch.Tensor, margin: float) -> torch.Tensor:
    """``Σ_{i<j} relu(1 − d_ij / m)² / K`` with ``m = margin · mean_{i≠j} d_ij`` (detached)."""
    k = book.shape[0]
    d2 = (book.pow(2).sum(1, keepdim=True) - 2 * book @ book.T + book.pow(2).sum(1)[None, :]).clamp_min(0)
    d = (d2 + 1e-12).sqrt()
    iu = torch.triu_indices(k, k, offset=1, device=book.device)
    pair = d[iu[0], iu[1]]
    m = (margin * pair.detach().mean()).clamp_min(1e-8)
    return torch.relu(1 - pair / m).pow(2).sum() / k
