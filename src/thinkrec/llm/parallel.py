"""The processes of a multi-process launch of the LLM stage (``accelerate launch --num_processes N``, ``torchrun``).

Every rank runs the whole stage on its own copy of the model; the HF / TRL trainers make training data-parallel, the
stage shards trace sampling and evaluation into contiguous slices (:func:`bounds`) and :func:`gather` puts the
slices back together in order on every rank, and only rank 0 writes files (:func:`is_main`), with a
:func:`barrier` after writes other ranks may read. One process without a launcher: rank 0 of 1, every helper a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, world_size)``: from the process group when one is up, else the launcher's ``RANK`` / ``WORLD_SIZE``
    (``(0, 1)`` without a launcher)."""
    if _initialised():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def rank_device(device: str) -> str:
    """The device this rank works on: under a multi-process launch ``cuda`` (or any ``cuda:i``) becomes
    ``cuda:LOCAL_RANK``, one GPU per process; anything else is left as it is."""
    if world()[1] > 1 and torch.device(device).type == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def init(device: str) -> None:
    """Join the launch's process group through accelerate's ``PartialState`` (gloo on CPU, NCCL on GPUs; the one the
    HF Trainer then uses). A no-op for one process or when a group is already up."""
    if world()[1] > 1 and not _initialised():
        from accelerate import PartialState

        PartialState(cpu=torch.device(device).type == "cpu")


def _group_size() -> int:
    """The process group's size; a launch of several processes without one is a bug (it would silently give each
    rank only its own shard)."""
    if _initialised():
        return dist.get_world_size()
    if world()[1] > 1:
        raise RuntimeError("a multi-process launch without a process group: call thinkrec.llm.parallel.init first")
    return 1


def barrier() -> None:
    if _group_size() > 1:
        dist.barrier()


def bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` things (the shares in rank order cover ``0..n``)."""
    return n * rank // size, n * (rank + 1) // size


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` for one process."""
    size = _group_size()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def gather_lists(items: list[Any]) -> list[Any]:
    """The concatenation of every rank's list in rank order, on every rank."""
    return [x for part in gather(items) for x in part]
