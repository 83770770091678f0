"""Training the generative retriever: AdamW with warm-up and cosine decay, early stopping on validation
N@10 (beam search over a fixed validation subset), a checkpoint every epoch, and exact resume.

Resume equals an uninterrupted run because every epoch draws its batch order and dropout from generators
seeded by ``(seed, epoch)``, and the checkpoint holds model, optimiser, scheduler, best state and history.

Under torch.distributed (``torchrun``; :mod:`thinkrec.utils.distributed`) training is data-parallel: each rank
takes a contiguous slice of every batch, DDP averages the gradients and each rank's loss is weighted by its share
of the batch's targets; validation users are sharded. Every term that is a mean over the batch's targets — the
per-level code losses, the item head (full softmax; sampled: per-rank negatives), alignment, ``L_reg`` — then
gives the one-process gradient of the combined batch (exactly, to float precision, with dropout 0); S²GR's InfoNCE
term (``aux_decoder``) contrasts a target with the other targets *of its rank's slice*, so it is not the
combined batch's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from thinkrec.data.batching import shifted_pair
from thinkrec.data.splits import SequenceSplit
from thinkrec.eval.metrics import mean_metrics
from thinkrec.eval.protocol import evaluate_full_ranking
from thinkrec.retrieval.inference import GenerativeScorer
from thinkrec.retrieval.model import GenerativeRetriever, RetrieverConfig
from thinkrec.tokenize.sids import SIDMap
from thinkrec.utils import distributed as dist
from thinkrec.utils.checkpoint import Checkpointer
from thinkrec.utils.config import config_hash, from_dict, spec
from thinkrec.utils.fit import FitConfig, fit
from thinkrec.utils.io import atomic_file, atomic_path
from thinkrec.utils.optim import LazyAdamW  # = AdamW unless sparse_item_grad
from thinkrec.utils.training import (
    AMP_MODES,
    length_bucketed_batches,
    lr_lambda,
    param_groups,
)


@dataclass
class RetrieverTrainConfig:
    lr: float = spec(2e-3, gt=0.0)
    weight_decay: float = spec(0.05, ge=0.0)
    batch_size: int = spec(256, ge=1)  # rows (users) per batch on average; bucketing keeps the target count equal
    epochs: int = spec(30, ge=1)
    patience: int = spec(3, ge=0)  # epochs without validation N@10 gain before stopping
    warmup_steps: int = spec(200, ge=0)
    min_lr_ratio: float = spec(0.05, ge=0.0, le=1.0)
    grad_clip: float = spec(1.0, ge=0.0)  # 0 = off
    max_train_s: float | None = spec(None, gt=0.0)  # stop after the epoch that crosses this training-time budget
    valid_users: int | None = spec(3000, ge=1)  # validation subset for early stopping (None = all)
    eval_beam: int = spec(20, ge=1)
    eval_batch_size: int = spec(256, ge=1)
    seed: int = 0
    # GPU switches (change nothing at their defaults): bf16 autocast of forward + loss; torch.compile of the
    # training forward + loss (the saved module is the plain one)
    amp: str = spec("off", choices=AMP_MODES)
    compile: bool = False


def prefix_batch(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, ends: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Bidirectional-encoder samples: history = row's items before ``ends`` (left-padded), target = item at ``ends``."""
    starts = offsets[rows]
    lengths = np.minimum(ends, max_len)
    t = int(lengths.max())
    cols = np.arange(t)
    src = (starts + ends)[:, None] - (t - cols)[None, :]
    valid = cols[None, :] >= (t - lengths)[:, None]
    hist = np.zeros((len(rows), t), dtype=np.int64)
    hist[valid] = items[src[valid]] + 1
    return hist, items[starts + ends] + 1


class _Batches:
    """Training batches of one epoch, for the causal (per-sequence) or bidirectional (per-prefix) encoder."""

    def __init__(self, split: SequenceSplit, causal: bool, batch_size: int, max_len: int):
        self.split, self.causal, self.batch_size, self.max_len = split, causal, batch_size, max_len
        lengths = split.train_offsets[1:] - split.train_offsets[:-1]
        if causal:
            self.lengths = lengths
            self.units = np.nonzero(lengths >= 2)[0]
        else:  # one unit per (row, target position ≥ 1)
            rows = np.repeat(np.arange(len(lengths)), np.maximum(lengths - 1, 0))
            pos = np.concatenate([np.arange(1, n) for n in lengths if n >= 2]) if len(rows) else np.zeros(0, np.int64)
            self.unit_rows, self.unit_ends = rows, pos
            self.lengths = np.minimum(pos, max_len) + 1  # "targets" = 1, sorted by history length
            self.units = np.arange(len(rows))

    def epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        if self.causal:
            return length_bucketed_batches(self.lengths, self.units, self.batch_size, self.max_len, rng)
        order = np.argsort(self.lengths + rng.random(len(self.units)) * 2.0, kind="stable")
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def tensors(self, units: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.split
        if self.causal:
            inp, tgt = shifted_pair(sp.train_offsets, sp.train_items, units, self.max_len)
            first = int(np.nonzero((tgt > 0).any(0))[0][0])  # drop all-padding leading columns
            inp, tgt = inp[:, first:], tgt[:, first:]
        else:
            inp, tgt = prefix_batch(sp.train_offsets, sp.train_items, self.unit_rows[units], self.unit_ends[units], self.max_len)
        return torch.from_numpy(inp).to(device), torch.from_numpy(tgt).to(device)


# ---------------------------------------------------------------------------------------------- persistence
def save_retriever(model: GenerativeRetriever, path: str | Path) -> Path:
    """``path/model.safetensors`` + ``path/config.json`` (model config and SID radix)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        # clone: tied weights share storage, which safetensors refuses
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_file(path / "config.json") as fh:
        json.dump({"config": asdict(model.config), "radix": model.radix}, fh, indent=2)
    return path


def load_retriever(path: str | Path, device: str | torch.device = "cpu") -> GenerativeRetriever:
    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    cfg = from_dict(RetrieverConfig, meta["config"], where=str(path / "config.json"))
    state = load_file(str(path / "model.safetensors"))
    if "think_scale" not in state:  # saved before the thinking-token scale existed: it fed back h unscaled
        cfg.think_scale_init = None
        state["think_scale"] = torch.tensor(1.0)
    model = GenerativeRetriever(state["item_codes"], meta["radix"], cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


def checkpoint_path(model_dir: str | Path) -> Path:
    """The per-epoch training checkpoint inside a retriever's folder (safetensors + JSON)."""
    return Path(model_dir) / "checkpoint"


# ---------------------------------------------------------------------------------------------- training
def _batch_terms(parts: dict[str, torch.Tensor], targets: int) -> tuple[dict[str, torch.Tensor], int]:
    """The whole batch's loss terms (target-weighted means of every rank's) and its target count, from this
    rank's terms (means over its ``targets``); in one process, ``parts`` (detached) and ``targets``."""
    detached = {k: v.detach() for k, v in parts.items()}
    if not dist.active():
        return detached, targets
    device = detached["loss"].device
    local = torch.stack([*(v.float() * targets for v in detached.values()), torch.tensor(float(targets), device=device)])
    total = dist.all_sum(local)
    n = float(total[-1])
    return {k: total[i] / n for i, k in enumerate(detached)}, round(n)


def train_retriever(
    split: SequenceSplit,
    sidmap: SIDMap,
    model_config: RetrieverConfig,
    config: RetrieverTrainConfig,
    device: str = "cpu",
    code_clusters: torch.Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
    stop_after_epochs: int | None = None,
    codebooks: list[np.ndarray] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[GenerativeRetriever, list[dict[str, Any]]]:
    """Train (or resume from ``checkpoint_dir/checkpoint/``) and return the best model by validation N@10.

    ``stop_after_epochs`` ends this call early (as a kill would) — for tests and chunked runs. ``on_step({"epoch",
    "step", "loss", ...})`` follows every optimiser step with the whole batch's loss terms. Under torch.distributed
    (module docstring) every rank returns the same model; rank 0 logs and writes the checkpoint.
    """
    if sidmap.n_items != split.n_items:
        raise ValueError(f"SID map covers {sidmap.n_items} items but the split has {split.n_items}")
    log, progress = dist.on_main(log), dist.on_main(progress)
    torch.manual_seed(config.seed)
    model = GenerativeRetriever(torch.from_numpy(sidmap.codes), sidmap.radix, model_config, code_clusters).to(device)
    if model_config.codebook_init:
        if codebooks is None:
            raise ValueError("codebook_init needs the quantizer's codebooks")
        model.init_code_embeddings(codebooks)
    if model_config.thinking and model_config.align and not any(model.has_clusters(lv) for lv in range(model.n_levels)):
        log("warning: alignment is on but no level has code clusters; L_align is skipped")
    opt = LazyAdamW(param_groups(model, config.weight_decay), lr=config.lr)
    data = _Batches(split, model_config.causal_encoder, config.batch_size, model_config.max_len)
    steps_per_epoch = len(data.epoch(np.random.default_rng(0)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(config.warmup_steps, steps_per_epoch * config.epochs, config.min_lr_ratio)
    )
    valid = split.valid
    if config.valid_users and len(valid) > config.valid_users:
        valid = valid.subset(np.sort(np.random.default_rng(config.seed).choice(len(valid), config.valid_users, replace=False)))
    valid = dist.shard_of(valid)
    scorer = GenerativeScorer(model, sidmap, config.eval_beam)
    step_losses = dist.data_parallel(model, lambda m, inp, tgt: m.losses(inp, tgt), config.compile)

    key = config_hash({"model": model_config, "train": config, "radix": sidmap.radix, "n_items": sidmap.n_items})
    ckpt = Checkpointer(checkpoint_path(checkpoint_dir) if checkpoint_dir else None, key, log, strict=True)
    task = _RetrieverTask(model, data, config, step_losses, scorer, valid, model_config.max_len, device)
    fit_config = FitConfig("retrieval", config.epochs, config.patience, config.grad_clip, config.amp, config.max_train_s,
                           "retrieval.train.max_train_s")
    history = fit(task, opt, sched, fit_config, ckpt, log, progress, on_step, stop_after_epochs=stop_after_epochs,
                  device=device)
    return model, history


@dataclass
class _RetrieverTask:
    """The generative retriever's part of :func:`~thinkrec.utils.fit.fit`: each epoch's shuffling and dropout
    seeded by ``(seed, epoch)`` (nothing to carry across checkpoints), the model's loss terms per batch weighted by
    its targets, beam-search validation N@10 on the fixed validation subset."""

    model: GenerativeRetriever
    data: _Batches
    config: RetrieverTrainConfig
    step_losses: Callable[..., dict[str, torch.Tensor]]
    scorer: GenerativeScorer
    valid: Any
    max_len: int
    device: str

    def start_epoch(self, epoch: int) -> list[Any]:
        rng = np.random.default_rng([self.config.seed, epoch])
        torch.manual_seed(self.config.seed * 100_003 + epoch)
        dist.decorrelate(self.config.seed, epoch)
        return self.data.epoch(rng)

    def loss(self, units: Any, epoch: int, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        inp, tgt = self.data.tensors(units[dist.batch_slice(len(units))], self.device)
        mine = int((tgt > 0).sum())
        (weight,) = dist.share(mine, device=self.device)  # this rank's share of the batch's targets
        parts = self.step_losses(inp, tgt)
        batch, w = _batch_terms(parts, mine)  # the whole batch's terms and targets, the same on every rank
        return parts["loss"] * weight, batch, float(w)

    def validate(self) -> dict[str, float]:
        per_user = evaluate_full_ranking(self.scorer.score, self.valid, ks=(10,), max_len=self.max_len,
                                         batch_size=self.config.eval_batch_size, device=self.device)[1] \
            if len(self.valid) else {}
        return mean_metrics(dist.gather_arrays(per_user))  # every rank: the metrics over all validation users

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def describe(self, row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']}: loss {row['loss']:.4f} (rec {row['rec']:.4f}) train {row['train_s']:.1f}s "
                f"{row['samples_per_s']:.0f} samples/s  valid N@10 {row['valid_ndcg@10']:.4f} "
                f"R@10 {row['valid_recall@10']:.4f}")
