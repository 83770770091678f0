"""Helpers shared by the benchmark drivers: configs and run directories, result rows, machine info.

A benchmark is a thin driver over the library: its configuration is a preset of ``configs/`` plus ``--set``
overrides (:func:`bench_config`, i.e. :func:`thinkrec.pipeline.config.load_run_config`); each variant it measures
is its own run directory (:func:`variant_dir`) whose nodes :func:`thinkrec.pipeline.run.run_pipeline` /
``ctx.graph.ensure`` train and cache; models load from their folders in that run directory.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.utils.io import read_json, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def row(benchmark: str, dataset: str, model: str, metrics: dict[str, Any], wall_s: float, **extra: Any) -> dict[str, Any]:
    return {"benchmark": benchmark, "dataset": dataset, "model": model, "metrics": metrics, "wall_s": round(wall_s, 2),
            "command": command_line(), "machine": machine(), **extra}


def save_rows(benchmark: str, rows: list[dict[str, Any]], key: str | tuple[str, ...] = "model",
              stale: Any = None) -> Path:
    """Write ``results/<benchmark>.json``; rows measured again (same dataset and ``key`` field(s)) replace the old
    ones, and so does every old row for which ``stale(row)`` is true (rows of an earlier protocol)."""
    path = RESULTS / f"{benchmark}.json"
    old = read_json(path) if path.exists() else []
    fields = (key,) if isinstance(key, str) else tuple(key)
    ident = lambda r: (r["dataset"], *(repr(r.get(f)) for f in fields))  # noqa: E731
    new_keys = {ident(r) for r in rows}
    old = [r for r in old if ident(r) not in new_keys and not (stale and stale(r))]
    write_json(path, old + rows)
    return path


# ---------------------------------------------------------------------------------------------- configs, run dirs
def bench_config(preset: str | Path | None, overrides: list[str], threads: int | None = None) -> Any:
    """A :class:`RunConfig` from a preset + ``--set`` overrides (``threads`` first, so an override can change it)."""
    from thinkrec.pipeline.config import load_run_config

    return load_run_config(preset, ([f"run.threads={threads}"] if threads else []) + list(overrides))


def variant_dir(out: str | Path, dataset: str, variant: str) -> Path:
    """``<out>/<dataset>/<variant>``, the variant's name made a safe folder name."""
    return Path(out) / dataset / re.sub(r"[^A-Za-z0-9.+@=_-]+", "_", variant).rstrip("_")


def open_variant(cfg: Any, root: str | Path, log: Any = print) -> Any:
    """A context over a variant's run directory (``thinkrec.pipeline.run.open_run``), torch threads from
    ``run.threads``."""
    import torch

    from thinkrec.pipeline.run import open_run

    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    return open_run(cfg, root, log)


def upstream_closure(ctx: Any, *names: str) -> list[str]:
    """The nodes ``names`` read, transitively, upstream first (``names`` included)."""
    out: list[str] = []

    def visit(n: str) -> None:
        if n in out:
            return
        for u in ctx.graph.nodes[n].upstream(ctx):
            visit(u)
        out.append(n)

    for n in names:
        visit(n)
    return out


def share_nodes(ctx: Any, src: str | Path, names: list[str]) -> list[str]:
    """Reuse finished nodes of another run directory ``src`` where they would be current in ``ctx``'s.

    Variants of one benchmark share their upstream (the data, the SIDs, a retriever, the re-ranking lists): each of
    ``names`` (upstream first, :func:`upstream_closure`) that is not up to date here and whose cache key in ``src``
    equals the key this run's config gives it is copied by :func:`thinkrec.pipeline.run.share_nodes`; the graph
    still decides what is current, anything else is (re)built here as usual. Returns the names copied."""
    from thinkrec.pipeline.run import share_nodes as copy_nodes

    src, g, copied = Path(src), ctx.graph, []
    if not src.exists() or src.resolve() == ctx.root.resolve():
        return copied
    for name in names:
        marker = src / g.marker_path(name).relative_to(ctx.root)
        if g.is_current(name) or not marker.exists() or read_json(marker).get("key") != g.key(name):
            continue
        copy_nodes(src, ctx.root, (name,))
        copied.append(name)
    if copied:
        ctx.log(f"shared from {src}: {', '.join(copied)}")
    return copied


def node_info(ctx: Any, name: str) -> dict[str, Any]:
    """The finished node's marker (wall time, what it reported)."""
    return ctx.graph.marker(name) or {}


# ---------------------------------------------------------------------------------------------- evaluation
def ranks(ctx: Any, scorer: Any, part: str = "test") -> tuple[np.ndarray, float]:
    """0-based ranks of ``scorer`` on the split's ``part`` by the pipeline's protocol (as
    :func:`thinkrec.pipeline.run.evaluate_scorer`, for any scorer and part) and the wall time."""
    import time

    from thinkrec.eval.protocol import compute_ranks

    ev = ctx.config.eval
    t = time.perf_counter()
    r = compute_ranks(scorer.score, getattr(ctx.get_split(), part), ctx.config.sasrec.max_len, ev.batch_size,
                      ctx.seen().exclude, ctx.config.run.device)
    return r, time.perf_counter() - t


def metrics_with_ci(ranks0: np.ndarray, ks: tuple[int, ...] = (5, 10), ci: tuple[str, ...] = ("recall@10", "ndcg@10"),
                    n_boot: int = 1000) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Mean R@K / N@K / MRR rounded for a row, 95 % bootstrap CIs of ``ci``, and the per-user values."""
    from thinkrec.eval.metrics import mean_metrics, rank_metrics
    from thinkrec.eval.stats import bootstrap_ci

    per_user = rank_metrics(ranks0, ks)
    out: dict[str, Any] = {k: round(v, 5) for k, v in mean_metrics(per_user).items()}
    for k in ci:
        _, lo, hi = bootstrap_ci(per_user[k], n_boot)
        out[f"{k}_ci95"] = [round(lo, 5), round(hi, 5)]
    return out, per_user
