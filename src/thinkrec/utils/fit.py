"""One training loop for the epoch-based trainers: resume, steps, validation, early stopping, checkpoints, progress.

A trainer describes its model's training as a :class:`FitTask` (the epoch's batches, one step's loss, validation,
any state of its own to resume) and calls :func:`fit` with its optimiser, scheduler and :class:`FitConfig`. The loop
owns everything else, the same way for every model: a checkpoint after every epoch (model, optimiser, scheduler,
torch RNG, early stopping with its best weights, history, wall time, the task's own state), exact resume from it,
the numerical check of every batch loss, the training-step hook (where the resume tests kill), the wall-clock cap
(a cap, never a budget: it logs when it stops a run), ``on_step`` / ``on_epoch`` hooks and, at the end, the best
weights restored.
Under torch.distributed every rank runs the loop; rank 0 logs and writes the checkpoint (:class:`Checkpointer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from thinkrec.utils import distributed as dist
from thinkrec.utils.checkpoint import Checkpointer
from thinkrec.utils.faults import check_finite, training_step
from thinkrec.utils.optim import clip_grad_norm
from thinkrec.utils.training import EarlyStopping, autocast


@dataclass
class FitConfig:
    stage: str  # named in messages and numerical errors ("sasrec", "retrieval")
    epochs: int
    patience: int
    grad_clip: float | None = None
    amp: str = "off"  # thinkrec.utils.training.AMP_MODES
    max_train_s: float | None = None  # a safety cap on wall time (training + validation), never a budget
    cap_field: str = "max_train_s"  # the config field of the cap, for its message
    eval_every: int = 1  # validate every n epochs (and after the last)


class FitTask(Protocol):
    """What a trainer supplies to :func:`fit` (its model file keeps the losses and scoring)."""

    model: nn.Module

    def start_epoch(self, epoch: int) -> list[Any]:
        """Seed what the epoch draws and return its batches (in order)."""

    def loss(self, batch: Any, epoch: int, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        """This rank's loss to back-propagate, the whole batch's loss terms (``"loss"`` first; the same on every
        rank) and the batch's weight in the epoch's mean."""

    def validate(self) -> dict[str, float]:
        """Validation metrics over every validation example (``"ndcg@10"`` decides early stopping)."""

    def state(self) -> dict[str, Any]:
        """The task's own resumable state (a persistent shuffling RNG), ``{}`` if none."""

    def load_state(self, state: dict[str, Any]) -> None: ...

    def describe(self, row: dict[str, Any]) -> str:
        """The log line of an epoch's history row."""


def fit(task: FitTask, opt: torch.optim.Optimizer, sched: Any, config: FitConfig, checkpoint: Checkpointer,
        log: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        stop_after_epochs: int | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Train ``task.model`` (resuming from ``checkpoint``) and return the history; the model ends in eval mode with
    the best validation weights. ``stop_after_epochs`` ends this call early, as a kill would (tests, chunked runs)."""
    model = task.model
    stopper = EarlyStopping(config.patience)
    history, spent, start = _resume(task, opt, sched, stopper, checkpoint, config, log, device)
    t_start = time.perf_counter() - spent
    for epoch in range(start, config.epochs + 1):
        batches = task.start_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0.0
        for step, batch in enumerate(batches):
            with autocast(device, config.amp):
                loss, terms, weight = task.loss(batch, epoch, step)
            check_finite(terms["loss"], config.stage, f"{epoch}.{step}", "loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                clip_grad_norm(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            values = {k: float(v) for k, v in terms.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * weight
            n += weight
            if on_step:
                on_step({"epoch": epoch, "step": step, **values})
            if progress:
                progress(step + 1, len(batches))
            training_step()
        train_s = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, **{k: v / max(1.0, n) for k, v in sums.items()}, "train_s": train_s,
                               "samples_per_s": n / max(train_s, 1e-9)}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            t1 = time.perf_counter()
            metrics = task.validate()
            row.update({f"valid_{k}": v for k, v in metrics.items()}, eval_s=time.perf_counter() - t1)
            if stopper.update(metrics["ndcg@10"], model):
                row["best"] = True
        history.append(row)
        log(task.describe(row))
        if on_epoch:
            on_epoch(row)
        out_of_time = dist.broadcast(bool(config.max_train_s and time.perf_counter() - t_start > config.max_train_s))
        checkpoint.save({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict(), "torch_rng": torch.get_rng_state(), "stopper": stopper.state(),
                         "task": task.state(), "history": history, "spent": time.perf_counter() - t_start,
                         "finished": stopper.exhausted or out_of_time})
        if stopper.exhausted:
            log(f"early stop after epoch {epoch} (best valid N@10 {stopper.best:.4f})")
            break
        if out_of_time:
            log(f"the {config.max_train_s:.0f}s safety cap ({config.cap_field}) stopped training after epoch {epoch} "
                f"of {config.epochs} (best valid N@10 {stopper.best:.4f}): this result depends on machine speed; "
                "raise the cap to reproduce it")
            break
        if stop_after_epochs is not None and epoch - start + 1 >= stop_after_epochs:
            break
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    model.eval()
    return history


def _resume(task: FitTask, opt: torch.optim.Optimizer, sched: Any, stopper: EarlyStopping, checkpoint: Checkpointer,
            config: FitConfig, log: Callable[[str], None], device: str) -> tuple[list[dict[str, Any]], float, int]:
    """Restore everything a checkpoint holds; ``(history, wall seconds spent, first epoch to run)``."""
    if (state := checkpoint.load(device)) is None:
        return [], 0.0, 1
    task.model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["torch_rng"])
    stopper.load(state["stopper"])
    task.load_state(state["task"])
    log(f"resumed from {checkpoint.directory} after epoch {state['epoch']}")
    start = config.epochs + 1 if state["finished"] else state["epoch"] + 1
    return state["history"], state["spent"], start
