"""SASRec (Kang & McAuley, 2018) with the losses the field compares.

``loss``: ``ce`` full-softmax cross-entropy over all items (what made SASRec a strong baseline, Klenitskiy &
Vasilev 2023); ``sampled`` softmax over the positive and ``negatives`` sampled items, drawn ``uniform`` from
the catalogue, ``in-batch`` (the batch's other targets) or ``mixed`` (both, Yang et al. 2020), with logQ
correction (Yi et al. 2019) for the popularity-biased in-batch draws; ``gbce``, Petrov & Macdonald's (2023)
generalised BCE over uniform negatives with calibration ``gbce_t``. Negatives are shared by a batch's targets
(one [T, N] matmul instead of a [T, N, d] gather). Logits are computed only at non-padded positions: on
short-sequence data most of a padded window is empty, and skipping it makes training ~4x faster.

Under torch.distributed (``torchrun``; :mod:`thinkrec.utils.distributed`) training is data-parallel: each rank
takes a contiguous slice of every batch and DDP averages the gradients, each rank's loss weighted by its share of
the batch's targets. ``ce`` and ``gbce`` / uniform ``sampled`` losses are means over targets and decompose:
``ce`` (with dropout 0) follows the one-process run on the combined batch to float precision; the sampled losses
draw their negatives per rank (the same distribution, other draws). ``in-batch`` / ``mixed`` sampling does not
decompose: a rank's in-batch candidates are its slice's targets, a smaller pool than the whole batch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from thinkrec.data.batching import shifted_pair
from thinkrec.data.splits import SequenceSplit
from thinkrec.eval.metrics import mean_metrics
from thinkrec.eval.protocol import evaluate_full_ranking
from thinkrec.utils import distributed as dist
from thinkrec.utils.checkpoint import Checkpointer, generator_state, set_generator_state
from thinkrec.utils.config import check_valid, config_hash, from_dict, spec
from thinkrec.utils.fit import FitConfig, fit
from thinkrec.utils.io import atomic_path, read_json, write_json
from thinkrec.utils.nn import normal_init
from thinkrec.utils.optim import LazyAdamW, SparseRows
from thinkrec.utils.training import (
    AMP_MODES,
    length_bucketed_batches,
    lr_lambda,
    param_groups,
)


@dataclass
class SASRecConfig:
    d_model: int = spec(64, ge=1)
    n_layers: int = spec(2, ge=1)
    n_heads: int = spec(2, ge=1)
    ffn_mult: int = spec(4, ge=1)
    dropout: float = spec(0.3, ge=0.0, lt=1.0)
    max_len: int = spec(50, ge=1)
    lr: float = spec(2e-3, gt=0.0)
    weight_decay: float = spec(0.01, ge=0.0)
    batch_size: int = spec(256, ge=1)
    epochs: int = spec(30, ge=1)
    patience: int = spec(3, ge=0)  # epochs without validation NDCG@10 gain before stopping
    eval_every: int = spec(1, ge=1)
    eval_batch_size: int = spec(2048, ge=1)
    warmup_steps: int = spec(100, ge=0)
    grad_clip: float = spec(1.0, ge=0.0)  # 0 = off
    length_bucketing: bool = True  # batch users of similar length: far less padding, same targets per epoch
    seed: int = 0
    loss: str = spec("ce", choices=lambda: LOSSES)  # ce | sampled | gbce
    negatives: int = spec(256, ge=0)  # sampled / gbce: uniform draws per batch (mixed: this many on top of the in-batch ones)
    negative_sampling: str = spec("uniform", choices=lambda: NEGATIVE_SAMPLING)  # sampled: uniform | in-batch | mixed
    logq: bool = True  # sampled: subtract log of each candidate's draw probability (a no-op for uniform)
    gbce_t: float = spec(0.75, ge=0.0, le=1.0)  # gbce: calibration t in [0, 1]; 0 = plain BCE, 1 = fully calibrated
    # sampled: the items already in the sequence up to each position are negatives too (a few hard negatives
    # that sampling almost never draws; without them the model scores its own input items high)
    history_negatives: bool = False
    max_train_s: float = spec(0.0, ge=0.0)  # stop after the epoch that passes this many seconds (0 = no budget)
    # cosine (warm-up, decay to 0.1× over all epochs) | constant (warm-up, then flat)
    schedule: str = spec("cosine", choices=("cosine", "constant"))
    # GPU switches (change nothing at their defaults): bf16 autocast of forward + loss; torch.compile of the
    # training forward + loss (the saved module is the plain one)
    amp: str = spec("off", choices=AMP_MODES)
    compile: bool = False
    # the item table gets sparse gradients (only the rows a step looks up) and a lazy AdamW update
    # (thinkrec.utils.optim), so a step costs the same at any catalogue size; needs a sampled loss (sampled / gbce);
    # under torchrun DDP all-reduces the sparse gradient (tested with gloo)
    sparse_items: bool = False

    def _checks(self) -> list[tuple[str, str]]:
        out = []
        if self.d_model % self.n_heads:
            out.append(("n_heads", f"must divide d_model {self.d_model} (got {self.n_heads})"))
        if self.sparse_items and self.loss == "ce":
            out.append(("sparse_items", "needs loss sampled or gbce (a full-softmax loss reads every item row)"))
        if self.loss != "ce" and self.negatives < 1 and self.negative_sampling != "in-batch":
            out.append(("negatives", f"must be ≥ 1 for loss {self.loss!r} with {self.negative_sampling!r} sampling "
                                     f"(got {self.negatives})"))
        return out

    def model_class(self) -> type[SASRec]:
        """The model this config builds (a method, not a field: a subclass such as BSARec's config picks its own
        model without changing this dataclass or its hash)."""
        return SASRec


LOSSES = ("ce", "sampled", "gbce")
NEGATIVE_SAMPLING = ("uniform", "in-batch", "mixed")


def check_config(config: SASRecConfig) -> None:
    """Refuse unknown loss / sampler names and impossible sizes before any training starts (every error at once,
    as a :class:`~thinkrec.utils.config.ConfigError` naming ``sasrec.<field>``, or the variant's section)."""
    check_valid(config, config.model_class().kind)


def sampled_softmax_loss(
    h: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor, n_uniform: int, sampling: str,
    log_q: torch.Tensor | None, generator: torch.Generator | None = None,
    extra_items: torch.Tensor | None = None, extra_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax CE of each target against shared sampled negatives.

    h [T, d] hidden states, pos [T] 0-based target items, weights [n_items, d]; ``log_q`` [n_items] is the log
    of the in-batch draw probability (item frequency among training targets) or None for no correction.
    ``extra_items`` / ``extra_logits`` [T, E]: per-row extra negatives (−1 / −inf = none), uncorrected; one that
    is already a candidate column is dropped, so no item is counted twice.
    """
    n_items = weights.shape[0]
    uniform = torch.randint(n_items, (n_uniform,), device=h.device, generator=generator)
    if sampling == "uniform":
        # The positive plus negatives; a negative that is the row's own positive is masked out. logQ is a
        # constant shift here (every item has the same draw probability), so it changes nothing.
        pos_logit = (h * weights[pos]).sum(-1, keepdim=True)
        neg_logit = (h @ weights[uniform].T).masked_fill(uniform[None] == pos[:, None], float("-inf"))
        logits, target = torch.cat([pos_logit, neg_logit], 1), torch.zeros(len(pos), dtype=torch.long, device=h.device)
        cands = uniform
    else:
        pool = pos if sampling == "in-batch" else torch.cat([pos, uniform])
        cands = torch.unique(pool)  # sorted; unique so no candidate collides with another row's positive twice
        logits = h @ weights[cands].T
        if log_q is not None:
            if sampling == "in-batch":
                correction = log_q[cands]
            else:  # expected draws of each item: T in-batch draws by frequency + n_uniform uniform ones
                correction = torch.log(len(pos) * log_q[cands].exp() + n_uniform / n_items)
            logits = logits - correction
        target = torch.searchsorted(cands, pos)
    if extra_items is not None:
        dup = torch.isin(extra_items, cands) | (extra_items == pos[:, None]) | (extra_items < 0)
        logits = torch.cat([logits, extra_logits.masked_fill(dup, float("-inf"))], 1)
    return F.cross_entropy(logits, target)


def gbce_loss(
    h: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor, n_negatives: int, t: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """gBCE (Petrov & Macdonald, RecSys 2023): BCE with the positive's probability raised to β.

    β = α (t (1 − 1/α) + 1/α), α = negatives / (n_items − 1) the sampling rate; it counters the
    over-confidence that BCE with few negatives learns.
    """
    n_items = weights.shape[0]
    neg = torch.randint(n_items, (n_negatives,), device=h.device, generator=generator)
    alpha = n_negatives / (n_items - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    pos_logit = (h * weights[pos]).sum(-1)
    neg_logit = h @ weights[neg].T
    neg_term = F.softplus(neg_logit).masked_fill(neg[None] == pos[:, None], 0.0).sum(-1)  # −log(1 − σ(s))
    return (beta * F.softplus(-pos_logit) + neg_term).mean()  # −β log σ(s⁺) − Σ log(1 − σ(s⁻))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d, d))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def attend(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """``x`` plus its causal self-attention (pre-LN residual)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0)
        return x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``valid`` [B, L] (non-padded positions) is unused here; variants' blocks (BSARec's filter) read it."""
        x = self.attend(x, attn_mask)
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    """Causal Transformer over item tokens (item + 1, 0 = pad), output embeddings tied to the input."""

    kind: ClassVar[str] = "sasrec"  # config.json's "model" and the config section named in errors
    config_type: ClassVar[type[SASRecConfig]] = SASRecConfig

    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.n_items = n_items
        self.config = config
        d = config.d_model
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0, sparse=config.sparse_items)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(self.make_block() for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(normal_init)

    def make_block(self) -> nn.Module:
        """One layer (a variant overrides this)."""
        c = self.config
        return Block(c.d_model, c.n_heads, c.ffn_mult, c.dropout)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] for left-padded tokens [B, L] (L ≤ max_len)."""
        b, t = tokens.shape
        pos = torch.arange(self.config.max_len - t, self.config.max_len, device=tokens.device)
        x = self.item_emb(tokens) * math.sqrt(self.config.d_model) + self.pos_emb(pos)
        x = self.drop(x)
        valid = tokens > 0
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        # Every position may attend to itself, so all-padding rows stay finite (their output is never used).
        mask = causal & (valid[:, None, :] | torch.eye(t, dtype=torch.bool, device=tokens.device))
        mask = mask[:, None]
        for blk in self.blocks:
            x = blk(x, mask, valid)
        return self.ln_f(x)

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight[1:]

    def user_vector(self, tokens: torch.Tensor) -> torch.Tensor:
        # Leading columns that are padding for every row change nothing (positions are right-aligned): drop them.
        nonpad = (tokens > 0).any(0).nonzero()
        first = int(nonpad[0]) if len(nonpad) else tokens.shape[1] - 1
        return self.hidden(tokens[:, first:])[:, -1]

    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scores of all items [B, n_items] for the next item after each history."""
        return self.user_vector(tokens) @ self.item_weights().T

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
        """The configured loss at the non-padded positions; ``log_q`` is used by in-batch / mixed sampling."""
        c = self.config
        keep = targets > 0
        hidden = self.hidden(inputs)
        h, pos = hidden[keep], targets[keep] - 1
        # sampled losses read only w[idx] and w.shape: with sparse items, lookups whose gradient names those rows
        w = SparseRows(self.item_emb, 1) if c.sparse_items else self.item_weights()
        if c.loss == "sampled":
            extra_items = extra_logits = None
            if c.history_negatives:  # every position's own inputs so far: [B, L, L] logits, causal
                t = inputs.shape[1]
                causal = torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril()
                logits = torch.einsum("bld,bsd->bls", hidden, self.item_emb(inputs))
                items = (inputs - 1)[:, None, :].expand(-1, t, -1).masked_fill(~causal[None], -1)
                extra_items, extra_logits = items[keep], logits[keep]
            return sampled_softmax_loss(h, pos, w, c.negatives if c.negative_sampling != "in-batch" else 0,
                                        c.negative_sampling, log_q if c.logq else None,
                                        extra_items=extra_items, extra_logits=extra_logits)
        if c.loss == "gbce":
            return gbce_loss(h, pos, w, c.negatives, c.gbce_t)
        return F.cross_entropy(h @ w.T, pos)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"n_items": str(self.n_items), **{k: str(v) for k, v in asdict(self.config).items()}})

    @classmethod
    def load(cls, path: str | Path, config: SASRecConfig, n_items: int, device: str = "cpu") -> SASRec:
        model = cls(n_items, config)
        model.load_state_dict(load_file(str(path), device=device))
        return model.to(device)

    def save_folder(self, path: str | Path) -> Path:
        """A standalone model folder: ``config.json`` (config + catalogue size) + ``model.safetensors``."""
        path = Path(path)
        self.save(path / "model.safetensors")
        write_json(path / "config.json", {"model": self.kind, "n_items": self.n_items, "config": asdict(self.config)})
        return path

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> SASRec:
        """Load a folder written by :meth:`save_folder`; needs nothing else."""
        path = Path(path)
        meta = read_json(path / "config.json")
        if meta.get("model", cls.kind) != cls.kind:
            raise ValueError(f"{path} holds a {meta['model']!r} model, not {cls.kind!r}")
        config = from_dict(cls.config_type, meta["config"], where=str(path / "config.json"))
        return cls.load(path / "model.safetensors", config, int(meta["n_items"]), device).eval()


def _epoch_batches(rows: np.ndarray, lengths: np.ndarray, config: SASRecConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches for one epoch.

    With bucketing, rows are sorted by (noisy) length and cut into batches holding about the same number of
    *targets* as a random batch of ``batch_size`` rows would (many short rows or a few long ones). Equal target
    counts keep every target's weight in the loss the same as with random batches, while padding all but
    disappears; batches of a fixed row count would over-weight the targets of short sequences.
    """
    if not config.length_bucketing:
        order = rng.permutation(rows)
        return [order[s : s + config.batch_size] for s in range(0, len(order), config.batch_size)]
    return length_bucketed_batches(lengths, rows, config.batch_size, config.max_len, rng)


def train_sasrec(
    split: SequenceSplit,
    config: SASRecConfig,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[SASRec, list[dict[str, Any]]]:
    """Train with early stopping on validation NDCG@10; returns the best model (by validation) and history.

    With ``checkpoint_dir``, every epoch ends with a checkpoint (model, optimizer, scheduler, the shuffling RNG, the
    torch RNG, early stopping with its best weights, history) from which a killed run resumes to the same result.
    ``on_step({"epoch", "step", "loss"})`` follows every optimiser step (the loss of the whole batch).

    Under torch.distributed (see the module docstring) every rank returns the same model and history; rank 0
    logs, reports progress and writes the checkpoint, every rank resumes from it.
    """
    check_config(config)
    log, progress = dist.on_main(log), dist.on_main(progress)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = config.model_class()(split.n_items, config).to(device)  # SASRec, or a variant's (BSARec)
    # In-batch draws follow the targets' frequency: logQ uses the training targets' item distribution.
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum())).float().to(device)
    opt = LazyAdamW(param_groups(model, config.weight_decay), lr=config.lr)  # = AdamW without sparse_items
    lengths = split.train_offsets[1:] - split.train_offsets[:-1]
    rows_all = np.nonzero(lengths >= 2)[0]
    steps_per_epoch = len(_epoch_batches(rows_all, lengths, config, np.random.default_rng(0)))
    total_steps = steps_per_epoch * config.epochs
    schedule = lr_lambda(config.warmup_steps, total_steps, floor=1.0 if config.schedule == "constant" else 0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    step_loss = dist.data_parallel(model, lambda m, inp, tgt: m.loss(inp, tgt, log_q), config.compile)
    valid = dist.shard_of(split.valid)

    ckpt = Checkpointer(checkpoint_dir, config_hash({"sasrec": config, "n_items": split.n_items,
                                                     "n_train": len(split.train_items)}), log)
    task = _SASRecTask(model, split, config, rows_all, lengths, rng, step_loss, valid, device)
    fit_config = FitConfig("sasrec", config.epochs, config.patience, config.grad_clip, config.amp, config.max_train_s,
                           "sasrec.max_train_s", config.eval_every)
    history = fit(task, opt, sched, fit_config, ckpt, log, progress, on_step, on_epoch, device=device)
    return model, history


@dataclass
class _SASRecTask:
    """SASRec's part of :func:`~thinkrec.utils.fit.fit`: length-bucketed batches shuffled by one RNG carried across
    epochs (and checkpoints), the model's loss on each batch's shifted sequences, full-ranking validation."""

    model: SASRec
    split: SequenceSplit
    config: SASRecConfig
    rows: np.ndarray  # training sequences with at least one target
    lengths: np.ndarray
    rng: np.random.Generator
    step_loss: Callable[..., torch.Tensor]
    valid: Any
    device: str

    def start_epoch(self, epoch: int) -> list[np.ndarray]:
        dist.decorrelate(self.config.seed, epoch)
        return _epoch_batches(self.rows, self.lengths, self.config, self.rng)

    def loss(self, rows: np.ndarray, epoch: int, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        inp, tgt = shifted_pair(self.split.train_offsets, self.split.train_items, rows[dist.batch_slice(len(rows))],
                                self.config.max_len)
        (weight,) = dist.share(int((tgt > 0).sum()), device=self.device)  # this rank's share of the batch's targets
        inp_t, tgt_t = torch.from_numpy(inp).to(self.device), torch.from_numpy(tgt).to(self.device)
        first = int((tgt_t > 0).any(0).nonzero()[0])  # leading columns that are padding for the whole batch go
        loss = self.step_loss(inp_t[:, first:], tgt_t[:, first:]) * weight
        return loss, {"loss": dist.reduce_mean(loss.detach())}, float(len(rows))

    def validate(self) -> dict[str, float]:
        self.model.eval()
        per_user = evaluate_full_ranking(self.model.score, self.valid, ks=(10,), max_len=self.config.max_len,
                                         batch_size=self.config.eval_batch_size, device=self.device)[1] \
            if len(self.valid) else {}
        return mean_metrics(dist.gather_arrays(per_user))  # every rank: the metrics over all validation users

    def state(self) -> dict[str, Any]:
        return {"rng": generator_state(self.rng)}

    def load_state(self, state: dict[str, Any]) -> None:
        set_generator_state(self.rng, state["rng"])

    def describe(self, row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']}: loss {row['loss']:.4f}  train {row['train_s']:.1f}s"
                + (f"  valid N@10 {row['valid_ndcg@10']:.4f} R@10 {row['valid_recall@10']:.4f}"
                   if "valid_ndcg@10" in row else ""))
