"""Batch inference over many users, sharded over the processes of a ``torchrun`` launch.

    torchrun --nproc_per_node 4 -m thinkrec.cli recommend -r runs/beauty --users all --out recs.parquet

(``-r``, not ``--run``: torchrun reads every argument and ``--run`` is an ambiguous prefix of its ``--run-path``.)

Each rank (``RANK`` / ``WORLD_SIZE`` from the launcher; one process without them) takes a contiguous slice of the
users, writes its rows to a hidden part file next to ``out`` (atomically), and after a barrier rank 0 concatenates
the parts in rank order into ``out`` (atomically) and removes them. The result is the file one process writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkrec.utils.distributed import process_group, shard, world
from thinkrec.utils.io import atomic_path

__all__ = ["process_group", "recommend_to_parquet", "results_frame", "shard", "world"]


def results_frame(results: Sequence[Any]) -> pl.DataFrame:
    """One row per (user, rank) of ``Funnel.recommend`` results."""
    return pl.DataFrame({
        "user_id": [r.user_id for r in results for _ in r.items],
        "rank": [i + 1 for r in results for i in range(len(r.items))],
        "item_id": [it.item_id for r in results for it in r.items],
        "score": [it.score for r in results for it in r.items],
        "retriever_rank": [it.ranks.get("retriever", it.ranks.get("candidates")) for r in results for it in r.items],
    }, schema={"user_id": pl.String, "rank": pl.Int64, "item_id": pl.String, "score": pl.Float64,
               "retriever_rank": pl.Int64})


def recommend_to_parquet(funnel: Any, ids: Sequence[str], out: str | Path, batch_size: int = 256,
                         progress: Callable[[int, int], None] | None = None, **recommend: Any) -> int:
    """``funnel.recommend`` for every user of ``ids`` into ``out`` (parquet), sharded over the launch's ranks.
    Returns the number of users this rank served."""
    out = Path(out)
    rank, size = world()
    mine = shard(ids, rank, size)
    results: list[Any] = []
    for lo in range(0, len(mine), batch_size):
        results += funnel.recommend(users=mine[lo: lo + batch_size], batch_size=batch_size, **recommend)
        if progress:
            progress(min(lo + batch_size, len(mine)), len(mine))
    frame = results_frame(results)
    if size == 1:
        with atomic_path(out) as tmp:
            frame.write_parquet(tmp)
        return len(mine)
    parts = [out.parent / f".{out.name}.part-{r}-of-{size}" for r in range(size)]
    with process_group("gloo") as dist:  # CPU barriers only; the funnel stays on the device it was loaded on
        with atomic_path(parts[rank]) as tmp:
            frame.write_parquet(tmp)
        dist.barrier()
        if rank == 0:
            with atomic_path(out) as tmp:
                pl.concat([pl.read_parquet(p) for p in parts]).write_parquet(tmp)
            for p in parts:
                p.unlink()
        dist.barrier()
    return len(mine)
