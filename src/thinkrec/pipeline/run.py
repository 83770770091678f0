"""The funnel as a stage graph over a run directory (see :mod:`thinkrec.pipeline.graph` for the cache rules).

Nodes: ``data`` → ``sids`` (Semantic IDs) → one node per next-item scorer (``popularity``, ``sasrec``,
``retrieval/<name>`` + ``retrieval/<name>/rescore``) → ``rerank/lists`` → ``rerank/evaluator`` →
``rerank/<model>`` → ``llm``, each family defined in its own module of :mod:`thinkrec.pipeline.stages`.
``evaluate``, ``funnel`` (the record of which models the loaded funnel uses and why), ``publish`` (the generation
``thinkrec.load`` reads, :mod:`thinkrec.pipeline.generations`) and ``report`` read what the nodes wrote and always
run. This module maps the ``stages:`` names of a config (:data:`~thinkrec.pipeline.config.STAGE_NAMES`) to those
nodes and steps and runs them.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`run_pipeline` starts the process group; the data-parallel trainers
(``sasrec``, ``retrieval/<name>``, ``rerank/evaluator``, ``rerank/<model>``) train on every rank, everything else
runs on rank 0 while the others wait (:mod:`thinkrec.pipeline.graph`); rank 0 alone logs and writes, so the run
directory is the one a single process writes. The LLM stage (``llm``) runs on every rank too: its trainers are
data-parallel and its trace sampling and evaluation sharded (:mod:`thinkrec.llm.parallel`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thinkrec.pipeline.config import STAGE_NAMES, RunConfig, check_run_config, dump_run_config, resolve
from thinkrec.pipeline.context import Context
from thinkrec.pipeline.graph import Graph
from thinkrec.pipeline.rundir import RunDir, storage_errors
from thinkrec.pipeline.scorers import candidate_sources
from thinkrec.pipeline.stages import build_nodes
from thinkrec.pipeline.stages.evaluate import publish_generation, run_evaluate, run_funnel_record
from thinkrec.pipeline.stages.report import run_report
from thinkrec.pipeline.stages.rerank import summarize_rerank
from thinkrec.utils import distributed as dist
from thinkrec.utils.io import atomic_file, read_json, write_json
from thinkrec.utils.progress import progress_callback


def _stage_steps(ctx: Context, stage: str) -> list[Callable[[], Any]]:
    """What a ``stages:`` entry does: nodes to bring up to date, then any always-run step."""
    cfg, g = ctx.config, ctx.graph

    def nodes(*names: str) -> list[Callable[[], Any]]:
        return [lambda n=n: g.ensure(n) for n in names]

    def on_main(*steps: tuple[str, Callable[[], Any]]) -> list[Callable[[], Any]]:
        """Steps that read what the nodes wrote and write summaries: rank 0 alone under torchrun."""
        return [lambda label=label, f=f: _on_main(ctx, label, f) for label, f in steps]

    if stage == "data":
        return nodes("data")
    if stage in ("popularity", "sasrec"):
        return nodes(stage)
    if stage == "tokenize":
        return nodes("sids")
    if stage == "retrieval":
        return nodes(*(f"retrieval/{m}/rescore" for m in cfg.retrieval.models))
    if stage == "candidates":
        return nodes("candidates") if candidate_sources(cfg) else []
    if stage == "rerank":
        return [*nodes("rerank/lists", "rerank/evaluator", *(f"rerank/{m}" for m in cfg.rerank.models)),
                *on_main(("rerank/summary", lambda: summarize_rerank(ctx)))]
    if stage == "llm":
        return nodes("llm")
    if stage == "evaluate":
        return on_main(("evaluate", lambda: run_evaluate(ctx)), ("funnel", lambda: run_funnel_record(ctx)),
                       ("publish", lambda: publish_generation(ctx)))
    if stage == "report":
        return on_main(("report", lambda: run_report(ctx)))
    raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_NAMES)}")


def _on_main(ctx: Context, label: str, step: Callable[[], Any]) -> None:
    """``step()`` on rank 0 alone (working :func:`~thinkrec.utils.distributed.solo`), the other ranks waiting."""
    if dist.is_main():
        ctx.log(f"{label}: writing")
        with dist.solo():
            step()
    ctx.graph.sync()  # the others wait here and learn which nodes rank 0 brought up to date


def open_run(config: RunConfig, run_dir: str | Path | None = None, log: Callable[[str], None] = print,
             progress: Callable[[str, int, int], None] | None = None, requested: list[str] | None = None) -> Context:
    """A context over the run directory with the graph of every node (nothing runs yet)."""
    resolved = resolve(config)
    root = Path(run_dir) if run_dir else Path(config.run.out_dir) / config.run.name
    rundir = RunDir(root)

    def both(msg: str) -> None:
        if dist.is_main():  # torchrun: rank 0 logs
            rundir.log(msg)
            log(msg)

    ctx = Context(resolved, rundir, both, progress, list(requested or []))
    ctx.graph = Graph(build_nodes(), ctx, root, both)
    return ctx


def run_pipeline(
    config: RunConfig,
    stages: list[str] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
    run_dir: str | Path | None = None,
    lock_wait: float = 0.0,
) -> Path:
    """Run the requested stages (default: ``config.stages``) in funnel order; returns the run directory.

    The run directory is locked for the call (:meth:`RunDir.lock`): a second run on it waits ``lock_wait``
    seconds, then fails with :class:`RunDirBusy`. Under ``torchrun`` every rank calls this; the trainers run
    data-parallel and rank 0 alone locks, logs and writes (module docstring)."""
    wanted = list(stages or config.stages)
    check_run_config(resolve(config), wanted)  # every config error at once, before anything is written
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    np.random.seed(config.run.seed)
    with dist.process_group():
        main = dist.is_main()
        progress = progress if main else None
        ctx = open_run(config, run_dir, log, progress, wanted)
        with (ctx.rundir.lock(wait=lock_wait) if main else contextlib.nullcontext()), \
                progress_callback(progress), storage_errors(ctx.root):
            # library code (embedding, re-ranker epochs, LLM phases) reports through thinkrec.utils.progress
            if main:
                with atomic_file(ctx.root / "config.yaml") as fh:
                    fh.write(dump_run_config(config))
            for name in STAGE_NAMES:
                if name in wanted:
                    t = time.perf_counter()
                    for step in _stage_steps(ctx, name):
                        step()
                    ctx.timings[name] = time.perf_counter() - t
            if main:
                timings_file = ctx.root / "timings.json"
                prev = read_json(timings_file) if timings_file.exists() else {}
                write_json(timings_file, {**prev, **ctx.timings})
    return ctx.root


def share_nodes(src_root: str | Path, dst_root: str | Path, names: tuple[str, ...]) -> None:
    """Copy finished nodes (their artifacts and markers) from one run directory to another, e.g. one dataset's
    data and Semantic IDs into the run directory of each benchmark variant. The copy's key is recomputed in the
    destination, so it is reused only where the destination's config declares the same inputs."""
    import shutil

    nodes = {n.name: n for n in build_nodes()}
    src, dst = Path(src_root), Path(dst_root)
    for name in names:
        marker = src / "stages" / f"{name.replace('/', '.')}.json"
        if not marker.exists():
            raise FileNotFoundError(f"{marker}: node {name!r} has not finished in {src}")
        target = dst / "stages" / marker.name
        if target.exists() and read_json(target).get("content") == read_json(marker).get("content"):
            continue
        for top in sorted({Path(a).parts[0] for a in nodes[name].artifacts}):
            shutil.copytree(src / top, dst / top, dirs_exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(marker, target)
