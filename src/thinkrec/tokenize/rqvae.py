"""RQ-VAE Semantic IDs (TIGER) with switchable codebook-collapse mitigations.

Architecture (TIGER): MLP encoder ``d → 512 → 256 → 128 → 32`` (ReLU), ``L`` residual levels of ``K`` codes of
dimension 32, MLP decoder mirroring the encoder back to ``d``. Loss per batch::

    ‖x − dec(z_q)‖²  +  Σ_l ( ‖sg(r_l) − e_l‖² + β ‖r_l − sg(e_l)‖² )     (+ optional regularisers)

with ``r_0 = enc(x)``, ``e_l`` the nearest level-``l`` codeword to ``r_l``, ``r_{l+1} = r_l − sg(e_l)``,
``z_q = Σ_l e_l`` and the straight-through estimator ``z + sg(z_q − z)`` feeding the decoder. Squared errors are
element means. Inputs are standardised (per-dim mean, one global scale) when ``standardize``.

Mitigations — every one is an independent config switch:

* ``kmeans_init``: before training, encode the whole fitting set with the initial encoder and set each level's
  codebook by faiss k-means on that level's residuals (otherwise: Kaiming-uniform random codebooks).
* ``ema``: codebooks follow exponential moving averages of their assigned residuals (decay ``ema_decay``,
  Laplace-smoothed counts) instead of the gradient of ``‖sg(r) − e‖²`` (that term is then dropped).
* ``dead_code_reset``: a code unused for ``dead_code_steps`` consecutive training steps is re-seeded from the
  current batch's residuals at its level (uniformly, or ∝ quantisation error with ``dead_code_sampling="error"``).
* ``diversity_loss`` (LETTER): every ``diversity_recluster_every`` steps the codewords of each level are grouped
  by constrained (equal-size) k-means into ``diversity_clusters`` groups; every step, each codeword is pulled
  toward a random *other* codeword of its group and pushed from all remaining ones (InfoNCE over negative squared
  distances scaled by their mean, temperature ``diversity_temperature``), weight ``diversity_weight``. Groups of
  coarse semantics become tighter and better separated, which spreads the items' assignments (LETTER).
* ``random_last_levels`` (0, 1, 2): the last levels are not learned; each item gets a deterministic random code
  there: a keyed hash (BLAKE2b, key = ``seed``) of its float32 input vector, so ``encode`` gives an item the
  same random code at fit time and later. Their ``codebooks()`` entries are seeded Gaussian matrices (no
  meaning; same shape as the learned ones so downstream embedding tables line up).

Why the residual quantizer is hand-written instead of vector-quantize-pytorch's ``ResidualVQ``: the library ties
dead-code expiry to its EMA cluster-size threshold rather than "unused for N steps", has no LETTER diversity loss,
no usage-aware (CoBa) assignment hook and no random levels, and combining its gradient/EMA modes with extra
codebook losses is version-dependent. Written out (≈ 200 lines) every switch acts alone, EMA composes with
gradient regularisers (an optimiser step moves the codewords, the EMA state absorbs the move, then the EMA update
runs), and :mod:`thinkrec.tokenize.coba` overrides two hooks (assignment, extra loss) to add its switches.

Training is mini-batch (``batch_size``; 0 = full batch) Adam on ``device``; ``self.history`` gets one record per
``log_every`` epochs (losses, per-level utilization/perplexity of the epoch's assignments, dead-code resets).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thinkrec.tokenize.base import FitContext, Quantizer
from thinkrec.tokenize.rqkmeans import balanced_kmeans, code_usage, faiss_kmeans, set_faiss_threads
from thinkrec.utils.checkpoint import Checkpointer, generator_state, set_generator_state
from thinkrec.utils.config import check_valid, config_hash, device_error, spec
from thinkrec.utils.faults import NumericalError, training_step


@dataclass
class RQVAEConfig:
    n_levels: int = spec(3, ge=1)
    codebook_size: int = spec(256, ge=2)
    code_dim: int = spec(32, ge=1)
    hidden_dims: list[int] = spec(default_factory=lambda: [512, 256, 128], ge=1)
    beta: float = spec(0.25, ge=0.0)  # commitment weight
    standardize: bool = True  # per-dim centring + one global scale, undone by reconstruct()
    # ---- training
    epochs: int = spec(150, ge=1)
    batch_size: int = spec(2048, ge=0)  # 0 = full batch
    lr: float = spec(1e-3, gt=0.0)
    weight_decay: float = spec(0.0, ge=0.0)
    grad_clip: float = spec(1.0, ge=0.0)  # 0 = off
    seed: int = 0
    device: str = spec("cpu", check=device_error)
    num_threads: int = spec(2, ge=0)  # torch/faiss threads during fit (0 = leave as is)
    log_every: int = spec(5, ge=1)  # epochs between history records
    # ---- collapse mitigations (each independent)
    kmeans_init: bool = True
    kmeans_init_iters: int = spec(20, ge=1)
    ema: bool = True
    ema_decay: float = spec(0.9, ge=0.0, lt=1.0)
    ema_eps: float = spec(1e-5, gt=0.0)
    dead_code_reset: bool = True
    dead_code_steps: int = spec(60, ge=1)  # consecutive unused steps before a code is re-seeded (≈ 10 epochs on Beauty)
    dead_code_sampling: str = spec("error", choices=("error", "random"))  # ∝ quantisation error, or uniformly
    diversity_loss: bool = False
    diversity_weight: float = spec(0.01, ge=0.0)
    diversity_clusters: int = spec(16, ge=2)
    diversity_temperature: float = spec(0.1, gt=0.0)
    diversity_recluster_every: int = spec(100, ge=1)  # steps
    random_last_levels: int = spec(0, ge=0, le=2)  # 0, 1 or 2

    def __post_init__(self) -> None:
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        check_valid(self)  # every range and combination at once (ConfigError, names relative to this config)

    def _checks(self) -> list[tuple[str, str]]:
        out = []
        if self.n_levels <= self.random_last_levels <= 2:
            out.append(("random_last_levels", f"must be in [0, n_levels = {self.n_levels}): at least one level is "
                                              f"learned (got {self.random_last_levels})"))
        if self.diversity_loss and not 2 <= self.diversity_clusters <= self.codebook_size // 2:
            out.append(("diversity_clusters", f"must be in [2, codebook_size / 2 = {self.codebook_size // 2}] "
                                              f"(groups of ≥ 2 codes; got {self.diversity_clusters})"))
        return out

    @property
    def n_learned(self) -> int:
        return self.n_levels - self.random_last_levels


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAENet(nn.Module):
    """Parameters and training state (everything here is saved)."""

    def __init__(self, input_dim: int, cfg: RQVAEConfig):
        super().__init__()
        K, D, L = cfg.codebook_size, cfg.code_dim, cfg.n_learned
        self.encoder = _mlp([input_dim, *cfg.hidden_dims, D])
        self.decoder = _mlp([D, *reversed(cfg.hidden_dims), input_dim])
        books = []
        for _ in range(L):
            w = torch.empty(K, D)
            nn.init.kaiming_uniform_(w)
            books.append(nn.Parameter(w))
        self.codebooks = nn.ParameterList(books)
        self.register_buffer("x_mean", torch.zeros(input_dim))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("ema_size", torch.ones(L, K))
        self.register_buffer("ema_sum", torch.stack([b.detach().clone() for b in books]))
        self.register_buffer("unused_steps", torch.zeros(L, K, dtype=torch.long))
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.register_buffer("random_books", torch.randn(cfg.random_last_levels, K, D, generator=gen) * 0.1)


@contextlib.contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class RQVAE(Quantizer):
    """TIGER RQ-VAE; see the module docstring for the switches."""

    name = "rqvae"
    config_cls: type[RQVAEConfig] = RQVAEConfig
    config: RQVAEConfig

    def __init__(self, config: RQVAEConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.net: RQVAENet | None = None
        self.fit_stats: dict[str, Any] = {}
        self.fit_input: np.ndarray | None = None  # what fit quantized (CoBa: H_align); not saved
        self._groups: list[torch.Tensor] = []
        self._step = 0
        self._resets = 0

    # ================================================================== public API
    def fit(self, x: np.ndarray, context: FitContext | None = None) -> RQVAE:
        cfg = self.config
        t0 = time.perf_counter()
        raw = np.ascontiguousarray(x, dtype=np.float32)
        x = self._prepare_input(raw, context)
        self.fit_input = x
        with _torch_threads(cfg.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            set_faiss_threads(cfg.num_threads)
            self.net = RQVAENet(x.shape[1], cfg).to(cfg.device)
            xt = torch.from_numpy(x).to(cfg.device)
            if cfg.standardize:
                mean = xt.mean(0)
                self.net.x_mean.copy_(mean)
                self.net.x_scale.copy_((xt - mean).pow(2).mean().sqrt().clamp_min(1e-8))
            self.history, self._step, self._resets, self._groups = [], 0, 0, []
            self._gen = torch.Generator().manual_seed(cfg.seed + 1)
            ckpt = Checkpointer(context.checkpoint_dir if context is not None else None,
                                config_hash({"method": self.name, "config": cfg, "input": hashlib.sha1(x.tobytes()).hexdigest()}),
                                log=lambda m: None)
            state = ckpt.load(str(xt.device))
            if cfg.kmeans_init and state is None:  # a resumed state replaces what k-means would set
                self._kmeans_init(self._standardize(xt))
            self._train(self._standardize(xt), cfg.epochs, ckpt, state)
            self.fit_codes_ = self._final_codes(x, raw)
        self.fit_seconds = time.perf_counter() - t0
        self.fit_stats = {**code_usage(self.fit_codes_, cfg.codebook_size), "fit_seconds": self.fit_seconds}
        return self

    def continue_training(self, x: np.ndarray, epochs: int) -> RQVAE:
        """More epochs on ``x`` with the current weights and training state (used to probe the switches).

        ``x`` is in the quantizer's input space (for CoBa: the aligned vectors)."""
        self._check()
        assert self.net is not None
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.config.device)
        with _torch_threads(self.config.num_threads):
            if not hasattr(self, "_gen"):
                self._gen = torch.Generator().manual_seed(self.config.seed + 1)
            self._train(self._standardize(xt), epochs)
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._check()
        x = np.ascontiguousarray(x, dtype=np.float32)
        with _torch_threads(self.config.num_threads):
            learned = self._encode_learned(x, final=False)
        return np.concatenate([learned, self._random_codes(x)], axis=1)

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        self._check()
        assert self.net is not None
        codes_t = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=self.config.device)
        with torch.no_grad():
            zq = sum(book[codes_t[:, lvl]] for lvl, book in enumerate(self.net.codebooks))
            out = self.net.decoder(zq) * self.net.x_scale + self.net.x_mean
        return out.cpu().numpy().astype(np.float32)

    def codebooks(self) -> list[np.ndarray]:
        self._check()
        assert self.net is not None
        books = [b.detach().cpu().numpy().copy() for b in self.net.codebooks]
        books += [b.cpu().numpy().copy() for b in self.net.random_books]
        return books

    @property
    def fitted(self) -> bool:
        return self.net is not None

    def _tensors(self) -> dict[str, np.ndarray]:
        assert self.net is not None
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def _meta(self) -> dict[str, Any]:
        assert self.net is not None
        return {"input_dim": int(self.net.x_mean.shape[0]), "fit_stats": self.fit_stats, "step": self._step}

    def _restore(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.net = RQVAENet(int(meta["input_dim"]), self.config)
        state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items() if k in self.net.state_dict()}
        self.net.load_state_dict(state)
        self.net.to(self.config.device)
        self.fit_stats = meta.get("fit_stats", {})
        self._step = int(meta.get("step", 0))

    # ================================================================== hooks (CoBa overrides these)
    def _prepare_input(self, x: np.ndarray, context: FitContext | None) -> np.ndarray:
        return x

    def _assign(self, level: int, d: torch.Tensor, train: bool, final: bool) -> torch.Tensor:
        """Codes from squared distances ``d [B, K]`` (no grad)."""
        return d.argmin(1)

    def _extra_loss(self) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def _final_codes(self, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Codes of the fitting items after training (``x``: quantizer input; ``raw``: the vectors given to
        ``fit``, which key the random levels)."""
        return np.concatenate([self._encode_learned(x, final=True), self._random_codes(raw)], axis=1)

    # ================================================================== internals
    def _standardize(self, xt: torch.Tensor) -> torch.Tensor:
        assert self.net is not None
        return (xt - self.net.x_mean) / self.net.x_scale

    @torch.no_grad()
    def _latent(self, xs: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        assert self.net is not None
        return torch.cat([self.net.encoder(xs[i : i + chunk]) for i in range(0, xs.shape[0], chunk)])

    @torch.no_grad()
    def _encode_learned(self, x: np.ndarray, final: bool) -> np.ndarray:
        assert self.net is not None
        xs = self._standardize(torch.from_numpy(x).to(self.config.device))
        r = self._latent(xs)
        codes = []
        for lvl, book in enumerate(self.net.codebooks):
            c = self._assign(lvl, _sq_dists(r, book), train=False, final=final)
            codes.append(c)
            r = r - book[c]
        return torch.stack(codes, 1).cpu().numpy().astype(np.int64)

    def _random_codes(self, x: np.ndarray) -> np.ndarray:
        cfg = self.config
        r = cfg.random_last_levels
        if r == 0:
            return np.zeros((x.shape[0], 0), dtype=np.int64)
        key = int(cfg.seed).to_bytes(8, "little", signed=True)
        x = np.ascontiguousarray(x, dtype=np.float32)
        raw = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8 * r, key=key).digest() for row in x)
        return (np.frombuffer(raw, dtype="<u8").reshape(-1, r) % np.uint64(cfg.codebook_size)).astype(np.int64)

    @torch.no_grad()
    def _kmeans_init(self, xs: torch.Tensor) -> None:
        cfg, net = self.config, self.net
        assert net is not None
        r = self._latent(xs)
        batch = xs.shape[0] if cfg.batch_size <= 0 else min(cfg.batch_size, xs.shape[0])
        for lvl, book in enumerate(net.codebooks):
            cent = faiss_kmeans(r.cpu().numpy(), cfg.codebook_size, cfg.kmeans_init_iters, cfg.seed + 101 * (lvl + 1))
            book.data.copy_(torch.from_numpy(cent).to(book.device))
            c = _sq_dists(r, book).argmin(1)
            counts = torch.bincount(c, minlength=cfg.codebook_size).float() * (batch / xs.shape[0])
            net.ema_size[lvl].copy_(counts.clamp_min(1e-3))
            net.ema_sum[lvl].copy_(book.data * net.ema_size[lvl, :, None])
            r = r - book[c]

    def _train(self, xs: torch.Tensor, epochs: int, ckpt: Checkpointer | None = None,
               state: dict[str, Any] | None = None) -> None:
        """``epochs`` epochs; with ``ckpt`` each ends with a checkpoint (weights + EMA / CoBa statistics, optimizer,
        the permutation generator, the torch RNG, step and reset counters, history) that a killed fit resumes from:
        ``state``, what ``ckpt.load()`` returned."""
        cfg = self.config
        if state is not None:  # before the optimizer: _restore builds a fresh network
            self._restore({k: np.asarray(v) for k, v in state["tensors"].items()}, state["meta"])
        net = self.net
        assert net is not None
        n = xs.shape[0]
        bs = n if cfg.batch_size <= 0 else min(cfg.batch_size, n)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        first_epoch = 1
        if state is not None:
            opt.load_state_dict(state["opt"])
            set_generator_state(self._gen, state["gen"])
            torch.set_rng_state(state["torch_rng"])
            self._resets, self._groups, self.history = state["resets"], list(state["groups"]), state["history"]
            first_epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        L, K = cfg.n_learned, cfg.codebook_size
        for epoch in range(first_epoch, epochs + 1):
            perm = torch.randperm(n, generator=self._gen).to(xs.device)
            sums: dict[str, float] = {}
            counts = torch.zeros(L, K, device=xs.device)
            n_batches = 0
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                if idx.numel() < max(2, bs // 4) and start > 0:
                    continue  # drop a tiny last batch (noisy EMA / dead-code statistics)
                logs, codes = self._train_step(xs[idx], opt)
                if not math.isfinite(logs["loss"]):
                    raise NumericalError(f"tokenize {self.name}", f"{epoch}.{start // bs}", "loss", f"loss {logs['loss']}")
                training_step()
                for lvl in range(L):
                    counts[lvl] += torch.bincount(codes[:, lvl], minlength=K).float()
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_batches += 1
            if epoch % max(1, cfg.log_every) == 0 or epoch == epochs:
                rec: dict[str, Any] = {"epoch": epoch, "step": self._step, "seconds": round(time.perf_counter() - t0, 3)}
                rec.update({k: v / max(n_batches, 1) for k, v in sums.items()})
                p = counts / counts.sum(1, keepdim=True).clamp_min(1)
                rec["utilization"] = (counts > 0).float().mean(1).tolist()
                rec["perplexity"] = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum(1)).tolist()
                rec["dead_code_resets"] = self._resets
                self.history.append(rec)
            if ckpt is not None:
                ckpt.save({"epoch": epoch, "tensors": self._tensors(), "meta": self._meta(), "opt": opt.state_dict(),
                           "gen": generator_state(self._gen), "torch_rng": torch.get_rng_state(),
                           "resets": self._resets, "groups": list(self._groups), "history": self.history})

    def _train_step(self, xb: torch.Tensor, opt: torch.optim.Optimizer) -> tuple[dict[str, float], torch.Tensor]:
        cfg, net = self.config, self.net
        assert net is not None
        net.train()
        z = net.encoder(xb)
        r = z
        zq = torch.zeros_like(z)
        quant = z.new_zeros(())
        resids, codes = [], []
        for lvl, book in enumerate(net.codebooks):
            with torch.no_grad():
                c = self._assign(lvl, _sq_dists(r.detach(), book.detach()), train=True, final=False)
            e = book[c]
            if cfg.ema:
                quant = quant + cfg.beta * F.mse_loss(r, e.detach())
            else:
                quant = quant + F.mse_loss(e, r.detach()) + cfg.beta * F.mse_loss(r, e.detach())
            resids.append(r.detach())
            codes.append(c)
            zq = zq + e.detach()
            r = r - e.detach()
        codes_t = torch.stack(codes, 1)
        xr = net.decoder(z + (zq - z).detach())
        recon = F.mse_loss(xr, xb)
        loss = recon + quant
        logs = {"recon": float(recon.detach()), "quant": float(quant.detach())}
        if cfg.diversity_loss:
            div = self._diversity()
            loss = loss + cfg.diversity_weight * div
            logs["diversity"] = float(div.detach())
        extra, extra_logs = self._extra_loss()
        if extra is not None:
            loss = loss + extra
            logs.update(extra_logs)
        logs["loss"] = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], cfg.grad_clip)
        opt.step()
        self._step += 1
        with torch.no_grad():
            for lvl in range(cfg.n_learned):
                if cfg.ema:
                    self._ema_update(lvl, resids[lvl], codes[lvl])
                if cfg.dead_code_reset:
                    self._reset_dead(lvl, resids[lvl], codes[lvl])
        return logs, codes_t

    def _ema_update(self, lvl: int, r: torch.Tensor, c: torch.Tensor) -> None:
        cfg, net = self.config, self.net
        assert net is not None
        book, size, total = net.codebooks[lvl], net.ema_size[lvl], net.ema_sum[lvl]
        K, g = cfg.codebook_size, cfg.ema_decay
        # absorb any optimiser move of the codewords (diversity / uniformity gradients) into the EMA state
        total.copy_(book.data * _smoothed(size, cfg.ema_eps, K)[:, None])
        n_k = torch.bincount(c, minlength=K).to(size.dtype)
        s_k = torch.zeros_like(total).index_add_(0, c, r)
        size.mul_(g).add_(n_k, alpha=1 - g)
        total.mul_(g).add_(s_k, alpha=1 - g)
        book.data.copy_(total / _smoothed(size, cfg.ema_eps, K)[:, None])

    def _reset_dead(self, lvl: int, r: torch.Tensor, c: torch.Tensor) -> None:
        cfg, net = self.config, self.net
        assert net is not None
        K = cfg.codebook_size
        used = torch.bincount(c, minlength=K) > 0
        steps = net.unused_steps[lvl]
        steps[used] = 0
        steps[~used] += 1
        dead = torch.nonzero(steps >= cfg.dead_code_steps).flatten()
        if dead.numel() == 0:
            return
        book = net.codebooks[lvl]
        if cfg.dead_code_sampling == "error":
            w = (r - book.data[c]).pow(2).sum(1).cpu().double() + 1e-12
        else:
            w = torch.ones(r.shape[0], dtype=torch.float64)
        pick = torch.multinomial(w, dead.numel(), replacement=dead.numel() > r.shape[0], generator=self._gen).to(r.device)
        book.data[dead] = r[pick]
        if cfg.ema:
            net.ema_size[lvl, dead] = 1.0
            net.ema_sum[lvl, dead] = r[pick]
        steps[dead] = 0
        self._resets += int(dead.numel())

    def _diversity(self) -> torch.Tensor:
        """LETTER diversity loss: pull every codeword toward a random other codeword of its group, away from the
        rest (InfoNCE over negative squared distances)."""
        cfg, net = self.config, self.net
        assert net is not None
        if not self._groups or self._step % max(1, cfg.diversity_recluster_every) == 0:
            self._groups = []
            for lvl, book in enumerate(net.codebooks):
                _, g = balanced_kmeans(book.detach().cpu().numpy(), cfg.diversity_clusters, niter=10, seed=cfg.seed + lvl)
                self._groups.append(torch.from_numpy(g).to(book.device))
        total = torch.zeros((), device=net.codebooks[0].device)
        for lvl, book in enumerate(net.codebooks):
            c = torch.arange(book.shape[0], device=book.device)
            pos = self._random_partner(self._groups[lvl], c)
            ok = pos >= 0
            d = _sq_dists(book[c[ok]], book)
            scale = d.detach().mean().clamp_min(1e-8)
            logits = (-d / (scale * cfg.diversity_temperature)).masked_fill(F.one_hot(c[ok], book.shape[0]).bool(), float("-inf"))
            total = total + F.cross_entropy(logits, pos[ok])
        return total

    def _random_partner(self, groups: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """A uniformly random other member of ``c``'s group (−1 where the group is a singleton)."""
        order = torch.argsort(groups, stable=True)
        sizes = torch.bincount(groups, minlength=self.config.diversity_clusters)
        starts = torch.cumsum(sizes, 0) - sizes
        g = groups[c]
        size = sizes[g]
        u = torch.rand(c.shape[0], generator=self._gen).to(c.device)
        k = (u * (size - 1).clamp_min(1).float()).long().clamp_max((size - 2).clamp_min(0))
        cand = order[starts[g] + k]
        last = order[starts[g] + size - 1]
        cand = torch.where(cand == c, last, cand)
        return torch.where(size >= 2, cand, torch.full_like(cand, -1))


def _smoothed(size: torch.Tensor, eps: float, k: int) -> torch.Tensor:
    n = size.sum()
    return (size + eps) / (n + k * eps) * n


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)[None, :]).clamp_min(0)

