"""Residual k-means (RQ-KMeans) Semantic IDs, plain or balanced, with faiss.

Level ``l`` runs k-means on the residuals left by levels ``< l`` and subtracts the assigned centroid
(GRID found this beats RQ-VAE on Amazon data). ``balanced=True`` replaces the final assignment of every
Lloyd iteration by a *capacity-constrained* one (each cluster holds at most ``ceil(capacity_factor · n / K)``
points), so code usage is flat by construction; the centroids are seeded by plain faiss k-means.

The capacity-constrained assignment (:func:`balanced_assign`) is a vectorised greedy proposal scheme:
every unassigned point proposes to its nearest non-full cluster, each cluster accepts its closest proposers
up to its remaining capacity, the rest propose again. It is exact w.r.t. the capacities and needs a handful of
rounds in practice (worst case ``K``), each ``O(n_left · K)`` in numpy.

Only the fitting items get the constrained assignment (:meth:`RQKMeans.fit_encode`); :meth:`RQKMeans.encode`
assigns new items to the nearest centroid per level. faiss-cpu runs on the CPU; ``device`` is accepted for a
uniform config surface and ignored (the work here is a few seconds on 12k × 384).

This module also holds the small helpers shared by the torch quantizers (:mod:`.rqvae`, :mod:`.coba`):
code-usage statistics and faiss k-means (persistence is in :class:`~thinkrec.tokenize.base.Quantizer`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from thinkrec.tokenize.base import FitContext, Quantizer
from thinkrec.utils.config import check_valid, device_error, spec


# ---------------------------------------------------------------------------------------------- helpers
def code_usage(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Per-level utilization / perplexity and the share of unique code tuples (before any dedup)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, n_levels = codes.shape
    util, ppl, max_share = [], [], []
    for level in range(n_levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size).astype(np.float64)
        p = counts[counts > 0] / max(n, 1)
        util.append(float((counts > 0).mean()))
        ppl.append(float(np.exp(-(p * np.log(p)).sum())) if n else 0.0)
        max_share.append(float(counts.max() / max(n, 1)))
    n_unique = int(np.unique(codes, axis=0).shape[0]) if n else 0
    return {
        "utilization": util,
        "perplexity": ppl,
        "max_code_share": max_share,
        "unique_share": n_unique / max(n, 1),
    }


def sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared euclidean distances ``[n, k]`` (float32, clipped at 0)."""
    d = (x * x).sum(1, keepdims=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def nearest_centroid(x: np.ndarray, c: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Index of each row's nearest centroid, ``batch`` rows at a time (memory ``batch × K``, not ``n × K``)."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for lo in range(0, x.shape[0], batch):
        out[lo: lo + batch] = sq_dists(x[lo: lo + batch], c).argmin(1)
    return out


def balanced_assign(d: np.ndarray, capacity: int | np.ndarray) -> np.ndarray:
    """Assign each row of the distance matrix ``d [n, k]`` to a column, at most ``capacity`` rows per column.

    Greedy proposals (see module docstring); exact w.r.t. the capacities. ``capacity · k`` must be ≥ n.
    """
    d = np.asarray(d)
    n, k = d.shape
    remaining = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (k,)).copy()
    if remaining.sum() < n:
        raise ValueError(f"total capacity {int(remaining.sum())} < {n} points")
    assign = np.full(n, -1, dtype=np.int64)
    left = np.arange(n)
    while left.size:
        dd = d[left]
        dd[:, remaining <= 0] = np.inf
        best = dd.argmin(1)
        best_d = dd[np.arange(left.size), best]
        order = np.lexsort((best_d, best))  # by cluster, then distance
        b_sorted = best[order]
        first = np.searchsorted(b_sorted, b_sorted, side="left")
        rank = np.arange(b_sorted.size) - first
        accept = rank < remaining[b_sorted]
        assign[left[order[accept]]] = b_sorted[accept]
        remaining -= np.bincount(b_sorted[accept], minlength=k)
        left = left[order[~accept]]
    return assign


def faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int, **kwargs: Any) -> np.ndarray:
    """Centroids ``[k, d]`` from ``faiss.Kmeans`` (float32)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] < k:
        raise ValueError(f"k-means with {k} centroids needs at least {k} points, got {x.shape[0]}")
    kwargs.setdefault("min_points_per_centroid", 1)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), verbose=False, **kwargs)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).copy()


def balanced_kmeans(
    x: np.ndarray,
    k: int,
    niter: int,
    seed: int,
    capacity_factor: float = 1.0,
    init_niter: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Capacity-constrained k-means: faiss init, then ``niter`` rounds of balanced assignment + mean update.

    Returns ``(centroids [k, d], assignment [n])``; the assignment is the constrained one against the
    returned centroids (no update after it).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    capacity = max(1, math.ceil(capacity_factor * n / k))
    c = faiss_kmeans(x, k, niter=max(1, init_niter), seed=seed)
    assign = balanced_assign(sq_dists(x, c), capacity)
    for _ in range(niter):
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
        new = balanced_assign(sq_dists(x, c), capacity)
        if np.array_equal(new, assign):
            break
        assign = new
    return c, assign


def set_faiss_threads(n: int) -> None:
    if n > 0:
        import faiss

        faiss.omp_set_num_threads(int(n))


# ---------------------------------------------------------------------------------------------- RQ-KMeans
@dataclass
class RQKMeansConfig:
    n_levels: int = spec(3, ge=1)
    codebook_size: int = spec(256, ge=2)
    niter: int = spec(20, ge=1)  # faiss k-means iterations per level
    seed: int = 0
    balanced: bool = False  # capacity-constrained assignment per level (flat code usage)
    capacity_factor: float = spec(1.0, ge=1.0)  # cluster capacity = ceil(capacity_factor · n / K); ≥ 1
    balanced_niter: int = spec(10, ge=0)  # constrained Lloyd rounds after the faiss initialisation
    num_threads: int = spec(2, ge=0)  # faiss OpenMP threads (0 = leave as is)
    # >0: fit the codebooks on this many items drawn at random (plain k-means only), then assign every item in
    # batches; cost of the fit stops growing with the catalogue (faiss already subsamples 256 points/centroid)
    fit_sample: int = spec(0, ge=0)
    assign_batch: int = spec(65_536, ge=1)  # rows per nearest-centroid batch: bounds the [batch, K] distances
    device: str = spec("cpu", check=device_error)  # accepted for a uniform config surface; faiss-cpu runs on the CPU

    def __post_init__(self) -> None:
        # every range at once (ConfigError, field names relative to this config); capacity_factor ≥ 1: the total
        # capacity must cover every point
        check_valid(self)

    def _checks(self) -> list[tuple[str, str]]:
        if self.fit_sample and self.balanced:
            return [("fit_sample", "needs balanced=false (capacities hold for the fitted items only)")]
        return []


class RQKMeans(Quantizer):
    """Residual k-means; ``codebooks()[l]`` are the level-``l`` centroids in the input space."""

    name = "rqkmeans"
    config_cls = RQKMeansConfig
    config: RQKMeansConfig

    def __init__(self, config: RQKMeansConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.centroids: list[np.ndarray] = []

    # ------------------------------------------------------------------ fitting
    def fit(self, x: np.ndarray, context: FitContext | None = None) -> RQKMeans:
        cfg = self.config
        t0 = time.perf_counter()
        set_faiss_threads(cfg.num_threads)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if cfg.fit_sample and x.shape[0] > cfg.fit_sample:
            return self._fit_on_sample(x, t0)
        resid = x.copy()
        total = float((x * x).sum(1).mean())
        self.centroids, codes, self.history = [], np.zeros((x.shape[0], cfg.n_levels), np.int64), []
        for level in range(cfg.n_levels):
            seed = cfg.seed + 1000 * level
            if cfg.balanced:
                c, a = balanced_kmeans(resid, cfg.codebook_size, cfg.balanced_niter, seed, cfg.capacity_factor, init_niter=cfg.niter)
            else:
                c = faiss_kmeans(resid, cfg.codebook_size, cfg.niter, seed)
                a = nearest_centroid(resid, c, cfg.assign_batch)
            resid -= c[a]
            codes[:, level] = a
            self.centroids.append(c)
            counts = np.bincount(a, minlength=cfg.codebook_size)
            self.history.append(
                {
                    "level": level,
                    "residual_mse": float((resid * resid).sum(1).mean()),
                    "relative_residual": float((resid * resid).sum(1).mean() / max(total, 1e-12)),
                    "utilization": float((counts > 0).mean()),
                    "max_over_mean_size": float(counts.max() / counts.mean()),
                    "seconds": time.perf_counter() - t0,
                }
            )
        self.fit_codes_ = codes
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _fit_on_sample(self, x: np.ndarray, t0: float) -> RQKMeans:
        """Codebooks from ``fit_sample`` random items (residual k-means on the sample), then every item encoded."""
        cfg = self.config
        rows = np.sort(np.random.default_rng(cfg.seed).choice(x.shape[0], cfg.fit_sample, replace=False))
        resid = x[rows].copy()
        self.centroids, self.history = [], []
        for level in range(cfg.n_levels):
            c = faiss_kmeans(resid, cfg.codebook_size, cfg.niter, cfg.seed + 1000 * level)
            resid -= c[nearest_centroid(resid, c, cfg.assign_batch)]
            self.centroids.append(c)
        fit_s = time.perf_counter() - t0
        codes = self.encode(x)
        total = float((x * x).sum(1).mean())
        recon = x - self.reconstruct(codes)
        mse = float((recon * recon).sum(1).mean())
        for level in range(cfg.n_levels):
            counts = np.bincount(codes[:, level], minlength=cfg.codebook_size)
            self.history.append({"level": level, "utilization": float((counts > 0).mean()),
                                 "max_over_mean_size": float(counts.max() / counts.mean()),
                                 "fit_sample": int(cfg.fit_sample)})
        self.history[-1].update(residual_mse=mse, relative_residual=mse / max(total, 1e-12))
        self.fit_codes_ = codes
        self.fit_seconds = time.perf_counter() - t0
        self.history[-1].update(fit_s=fit_s, assign_s=self.fit_seconds - fit_s)
        return self

    # ------------------------------------------------------------------ inference
    @property
    def fitted(self) -> bool:
        return bool(self.centroids)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid per level on the residuals (new items never see capacities)."""
        self._check()
        resid = np.array(x, dtype=np.float32, copy=True)
        codes = np.zeros((resid.shape[0], len(self.centroids)), dtype=np.int64)
        for level, c in enumerate(self.centroids):
            a = nearest_centroid(resid, c, self.config.assign_batch)
            codes[:, level] = a
            resid -= c[a]
        return codes

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        self._check()
        codes = np.asarray(codes, dtype=np.int64)
        out = np.zeros((codes.shape[0], self.centroids[0].shape[1]), dtype=np.float32)
        for level, c in enumerate(self.centroids):
            out += c[codes[:, level]]
        return out

    def codebooks(self) -> list[np.ndarray]:
        self._check()
        return [c.copy() for c in self.centroids]

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, np.ndarray]:
        return {f"centroids.{i}": c for i, c in enumerate(self.centroids)}

    def _restore(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.centroids = [tensors[f"centroids.{i}"] for i in range(self.config.n_levels)]
