"""torch.distributed for a ``torchrun`` launch (one process without it: every helper is then an identity or a no-op).

    torchrun --nproc_per_node 4 -m thinkrec.cli train sasrec --config configs/beauty.yaml

The launch: :func:`world` reads ``RANK`` / ``WORLD_SIZE`` from the environment, :func:`process_group` starts the
group (gloo on CPU; gloo for CPU tensors and NCCL for CUDA tensors where CUDA is available, each rank on GPU
``LOCAL_RANK``). The trainers (SASRec, the generative retriever, the re-rankers) train data-parallel inside it:

- every rank draws the same epoch (the shuffling RNG is seeded alike) and takes a contiguous slice of each global
  batch (:func:`batch_slice`);
- the model runs under ``DistributedDataParallel`` (:func:`data_parallel`), whose backward averages the gradients;
  a loss that is a mean over ``n_r`` targets of rank ``r`` is scaled by ``W · n_r / Σ n`` (:func:`share`), so the
  average is exactly the gradient of the mean over the combined batch, whatever the split of the targets;
- validation is sharded (:func:`shard_of`) and its per-example metrics gathered in rank order
  (:func:`gather_arrays`), so every rank sees the one-process numbers; stop decisions come from rank 0
  (:func:`broadcast`); checkpoints are written by rank 0 (:class:`~thinkrec.utils.checkpoint.Checkpointer`) and
  read by every rank; logs and progress come from rank 0 (:func:`on_main`).

:func:`solo` makes this process work alone inside a launch (the pipeline runs stages that do not train
data-parallel on rank 0 that way while the other ranks wait at a barrier).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn as nn

T = TypeVar("T")

#: Seconds a collective waits for the other ranks (ranks wait at a barrier while rank 0 builds SIDs or evaluates).
TIMEOUT_S = float(os.environ.get("THINKREC_DIST_TIMEOUT_S", 6 * 3600))

_SOLO: ContextVar[bool] = ContextVar("thinkrec_dist_solo", default=False)


# ---------------------------------------------------------------------------------------------- the launch
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from ``torchrun``'s environment, else ``(0, 1)``."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


@contextlib.contextmanager
def process_group(backend: str | None = None) -> Iterator[Any]:
    """The launch's process group (``torch.distributed``; ``None`` for a single process); torn down on exit
    unless it was already initialised. ``backend`` defaults to gloo, plus NCCL for CUDA tensors where CUDA is
    available; with NCCL each rank's default CUDA device (``"cuda"``) is ``cuda:LOCAL_RANK``."""
    rank, size = world()
    if size == 1:
        yield None
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        backend = backend or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        if "nccl" in backend and local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())  # "cuda" is then this rank's GPU
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        yield dist
    finally:
        if owned:
            dist.destroy_process_group()


def bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous slice of ``n`` items (slices in rank order cover them once)."""
    cuts = np.linspace(0, n, size + 1).round().astype(int)
    return int(cuts[rank]), int(cuts[rank + 1])


def shard(ids: Sequence[T], rank: int, size: int) -> list[T]:
    """Rank ``rank``'s contiguous slice of ``ids`` (slices in rank order give back ``ids``)."""
    lo, hi = bounds(len(ids), rank, size)
    return list(ids[lo:hi])


# ---------------------------------------------------------------------------------------------- this rank
def active() -> bool:
    """A process group of more than one rank is running (and this process is not working :func:`solo`)."""
    import torch.distributed as dist

    return (not _SOLO.get() and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Inside the block this process works alone, as the one rank of a world of one (no collectives): for work
    rank 0 does while the others wait."""
    token = _SOLO.set(True)
    try:
        yield
    finally:
        _SOLO.reset(token)


def on_main(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """``fn`` on rank 0; a no-op elsewhere (logs and progress come from one rank)."""
    if fn is None or is_main():
        return fn
    return lambda *args, **kwargs: None


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over the ranks (``t`` itself in one process)."""
    if not active():
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks: for a loss scaled by :func:`share`, the combined batch's loss."""
    return all_sum(t) / size() if active() else t


def gather_arrays(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every rank's arrays concatenated in rank order, on every rank (``parts`` in one process; a rank with
    nothing passes ``{}``): with contiguous shards, what one process computes over all of them."""
    if not active():
        return parts
    import torch.distributed as dist

    everyone: list[Any] = [None] * size()
    dist.all_gather_object(everyone, {k: np.asarray(v) for k, v in parts.items()})
    keys = next((list(p) for p in everyone if p), [])
    return {k: np.concatenate([p[k] for p in everyone if p]) for k in keys}


# ---------------------------------------------------------------------------------------------- data-parallel training
def batch_slice(n: int) -> slice:
    """This rank's contiguous rows of a global batch of ``n`` rows: all of them in one process, and on every rank
    when ``n`` is below the world size (each rank then computes the whole batch; :func:`share` weights it so)."""
    if not active() or n < size():
        return slice(0, n)
    return slice(*bounds(n, rank(), size()))


def shard_of(data: T) -> T:
    """This rank's contiguous part of ``data`` (anything with ``len`` and ``subset(indices)``, e.g. validation
    examples or lists); ``data`` itself in one process."""
    if not active():
        return data
    lo, hi = bounds(len(data), rank(), size())  # type: ignore[arg-type]
    return data.subset(np.arange(lo, hi))  # type: ignore[attr-defined]


def share(*counts: int | float, device: str | torch.device = "cpu") -> list[float]:
    """For losses that are means over ``counts[k]`` elements of this rank's slice: the factors ``W · n_k / Σ n_k``
    (summed over the ranks) that make DDP's average of the ranks' gradients the gradient of the mean over the
    combined batch (0 for a term with no element anywhere). ``1.0`` each in one process. A collective: every
    rank calls it, in the same order."""
    if not active():
        return [1.0] * len(counts)
    totals = all_sum(torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)).tolist()
    return [size() * float(c) / n if n > 0 else 0.0 for c, n in zip(counts, totals, strict=True)]


def decorrelate(seed: int, *keys: int) -> None:
    """Ranks other than 0 reseed torch's RNG from ``(seed, keys, rank)``, so their dropout masks are their own;
    rank 0 (and a single process) keeps the stream one process draws."""
    if rank() > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, *keys, rank()]).generate_state(1)[0]))


class LossModule(nn.Module):
    """``fn(model, *args)`` as a module's forward: DDP hooks ``forward``, so the whole loss computation (one or
    several model calls) must run inside one."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.model, *args)


def data_parallel(model: nn.Module, fn: Callable[..., Any], compile: bool = False) -> Callable[..., Any]:
    """``step(*args) = fn(model, *args)`` for training: under ``DistributedDataParallel`` when the group has more
    than one rank (its backward averages the gradients over the ranks), and compiled with ``torch.compile`` when
    asked. ``model`` itself is what is saved and evaluated (its state-dict keys are unchanged)."""
    step: nn.Module = LossModule(model, fn)
    if active():
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        # find_unused_parameters: which parameters a step uses depends on the data (e.g. no positive on a slice)
        step = DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    return torch.compile(step) if compile else step
