"""The stage graph over a run directory: skip what is done, run what is not.

data → popularity → sasrec → evaluate → report. Later funnel stages (Semantic IDs, retriever, re-rankers,
LLM) plug in as further entries of ``STAGES``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from thinkrec.baselines.popularity import Popularity
from thinkrec.baselines.sasrec import SASRec, train_sasrec
from thinkrec.data.dataset import Dataset
from thinkrec.data.registry import load_dataset
from thinkrec.data.splits import SequenceSplit, make_split
from thinkrec.eval.metrics import mean_metrics, rank_metrics
from thinkrec.eval.protocol import compute_ranks
from thinkrec.eval.stats import bootstrap_ci, paired_test
from thinkrec.pipeline.config import RunConfig
from thinkrec.pipeline.rundir import RunDir
from thinkrec.retrieval.inference import GenerativeScorer
from thinkrec.utils.config import dump_yaml
from thinkrec.utils.io import atomic_file, atomic_path, read_json, write_json


@dataclass
class Context:
    """What stages share in memory during one invocation (everything is also on disk)."""

    config: RunConfig
    rundir: RunDir
    log: Callable[[str], None]
    progress: Callable[[str, int, int], None] | None = None
    dataset: Dataset | None = None
    split: SequenceSplit | None = None
    scorers: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def get_dataset(self) -> Dataset:
        if self.dataset is None:
            self.dataset = Dataset.load(self.rundir.root / "data")
        return self.dataset

    def get_split(self) -> SequenceSplit:
        if self.split is None:
            d = self.config.data
            temporal = d.split.startswith(("temporal", "global"))
            kwargs = {"valid_frac": d.valid_frac, "test_frac": d.test_frac} if temporal else {}
            self.split = make_split(self.get_dataset(), d.split, **kwargs)
        return self.split


def stage_data(ctx: Context) -> None:
    d = ctx.config.data
    if ctx.rundir.is_done("data", d):
        ctx.log("data: prepared dataset found, skipping")
        return
    t = time.perf_counter()
    dataset = load_dataset(d.dataset, d.data_root, format=d.format, **d.options)
    dataset.save(ctx.rundir.root / "data")
    ctx.dataset = dataset
    ctx.rundir.mark_done("data", d, stats=dataset.stats())
    ctx.log(f"data: {d.dataset} → {dataset.n_users} users, {dataset.n_items} items, {dataset.n_interactions} interactions ({time.perf_counter() - t:.1f}s)")


def stage_popularity(ctx: Context) -> None:
    ctx.scorers["popularity"] = Popularity.fit(ctx.get_split())


def stage_sasrec(ctx: Context) -> None:
    cfg = ctx.config.sasrec
    split = ctx.get_split()
    out = ctx.rundir.stage_dir("sasrec")
    key = {"sasrec": cfg, "data": ctx.config.data}
    if ctx.rundir.is_done("sasrec", key):
        ctx.log("sasrec: trained model found, loading")
        ctx.scorers["sasrec"] = SASRec.load(out / "model.safetensors", cfg, split.n_items, ctx.config.run.device).eval()
        return
    t = time.perf_counter()

    def progress(step: int, total: int) -> None:
        if ctx.progress:
            ctx.progress("sasrec", step, total)

    model, history = train_sasrec(split, cfg, ctx.config.run.device, log=lambda m: ctx.log(f"sasrec: {m}"), progress=progress)
    wall = time.perf_counter() - t
    model.save(out / "model.safetensors")
    write_json(out / "history.json", history)
    with atomic_file(out / "config.yaml") as fh:
        fh.write(dump_yaml(cfg))
    write_json(
        out / "train_metrics.json",
        {"wall_s": wall, "epochs": len(history), "s_per_epoch": float(np.median([h["train_s"] for h in history])),
         "best_valid_ndcg@10": max((h.get("valid_ndcg@10", 0.0) for h in history), default=0.0)},
    )
    ctx.scorers["sasrec"] = model
    ctx.rundir.mark_done("sasrec", key, wall_s=wall)


def stage_tokenize(ctx: Context) -> None:
    """Stage 1: Semantic IDs for every item (embeddings → quantizer → bijective SIDs → report)."""
    from thinkrec.tokenize.stage import run_tokenize

    cfg = ctx.config.tokenize
    key = {"tokenize": cfg, "data": ctx.config.data}
    if ctx.rundir.is_done("sids", key):
        ctx.log("tokenize: Semantic IDs found, skipping")
        return
    t = time.perf_counter()
    art = run_tokenize(ctx.get_dataset(), ctx.get_split(), cfg, ctx.rundir.root / "sids", log=ctx.log)
    ctx.rundir.mark_done("sids", key, wall_s=time.perf_counter() - t, unique_before_dedup=art.report["unique_before_dedup"])


def stage_retrieval(ctx: Context) -> None:
    """Stage 2: generative retrievers (TIGER, S²GR) over the run's Semantic IDs."""
    from thinkrec.retrieval.stage import load_scorer, train_one
    from thinkrec.tokenize.stage import load_tokenize

    cfg = ctx.config.retrieval
    if not (ctx.rundir.root / "sids" / "sidmap").exists():
        stage_tokenize(ctx)
    sids = load_tokenize(ctx.rundir.root / "sids")
    out = ctx.rundir.stage_dir("retrieval")
    device = ctx.config.run.device
    for name in cfg.models:
        key = {"retrieval": cfg.model_config(name), "train": cfg.train, "tokenize": ctx.config.tokenize, "data": ctx.config.data}
        stage = f"retrieval_{name}"
        if ctx.rundir.is_done(stage, key):
            ctx.log(f"retrieval: trained {name} found, loading")
            ctx.scorers[name] = load_scorer(out / name, sids, cfg.beam, device)
            continue

        def progress(step: int, total: int, name: str = name) -> None:
            if ctx.progress:
                ctx.progress(name, step, total)

        model, summary = train_one(name, ctx.get_split(), sids, cfg, out, device,
                                   log=lambda m, name=name: ctx.log(f"{name}: {m}"), progress=progress)
        ctx.scorers[name] = GenerativeScorer(model, sids.sidmap, cfg.beam)
        ctx.rundir.mark_done(stage, key, **summary)


def _load_trained_retrievers(ctx: Context) -> None:
    """Register retrievers trained in an earlier invocation (evaluate-only runs)."""
    from thinkrec.retrieval.stage import load_scorer
    from thinkrec.tokenize.stage import load_tokenize

    root = ctx.rundir.root / "retrieval"
    names = [n for n in ctx.config.retrieval.models if (root / n / "model.safetensors").exists() and n not in ctx.scorers]
    if names:
        sids = load_tokenize(ctx.rundir.root / "sids")
        for n in names:
            ctx.scorers[n] = load_scorer(root / n, sids, ctx.config.retrieval.beam, ctx.config.run.device)


def stage_evaluate(ctx: Context) -> None:
    """Test-set full ranking for every trained model, with bootstrap CIs and paired tests vs the best."""
    ev = ctx.config.eval
    split = ctx.get_split()
    if "popularity" not in ctx.scorers:
        stage_popularity(ctx)
    if "sasrec" not in ctx.scorers and (ctx.rundir.root / "sasrec" / "model.safetensors").exists():
        stage_sasrec(ctx)
    _load_trained_retrievers(ctx)
    out = ctx.rundir.stage_dir("eval")
    results: dict[str, Any] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for name, scorer in ctx.scorers.items():
        t = time.perf_counter()
        ranks = compute_ranks(scorer.score, split.test, ctx.config.sasrec.max_len, ev.batch_size, ev.mask_history, ctx.config.run.device)
        elapsed = time.perf_counter() - t
        pu = rank_metrics(ranks, ev.ks)
        per_user[name] = pu
        means = mean_metrics(pu)
        ci = {k: bootstrap_ci(v, ev.bootstrap, seed=ctx.config.run.seed)[1:] for k, v in pu.items()}
        results[name] = {"metrics": means, "ci95": ci, "users": len(ranks), "users_per_s": len(ranks) / max(elapsed, 1e-9)}
        ctx.log(f"evaluate: {name} " + " ".join(f"{k}={v:.4f}" for k, v in means.items()))
    names = list(per_user)
    k_main = f"ndcg@{10 if 10 in ev.ks else ev.ks[-1]}"
    if len(names) >= 2:
        best = max(names, key=lambda n: results[n]["metrics"][k_main])
        results["paired_tests"] = {
            f"{best}_vs_{other}": paired_test(per_user[best][k_main], per_user[other][k_main], ev.bootstrap, seed=ctx.config.run.seed)
            for other in names
            if other != best
        }
    frame = pl.DataFrame({"user": split.test.users, **{f"{n}/{k}": v for n, pu in per_user.items() for k, v in pu.items()}})
    with atomic_path(out / "per_user.parquet") as tmp:
        frame.write_parquet(tmp)
    write_json(out / "metrics.json", results)
    write_json(ctx.rundir.root / "metrics.json", {"dataset": ctx.config.data.dataset, "split": split.kind, "test": results})


def stage_report(ctx: Context) -> None:
    from thinkrec.pipeline.report import write_report

    write_report(ctx.rundir.root, ctx.config)
    ctx.log(f"report: {ctx.rundir.root / 'report.md'}")


STAGES: dict[str, Callable[[Context], None]] = {
    "data": stage_data,
    "popularity": stage_popularity,
    "sasrec": stage_sasrec,
    "tokenize": stage_tokenize,
    "retrieval": stage_retrieval,
    "evaluate": stage_evaluate,
    "report": stage_report,
}


def run_pipeline(
    config: RunConfig,
    stages: list[str] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Run the requested stages (default: ``config.stages``) in funnel order; returns the run directory."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    np.random.seed(config.run.seed)
    root = Path(run_dir) if run_dir else Path(config.run.out_dir) / config.run.name
    rundir = RunDir(root)
    with atomic_file(root / "config.yaml") as fh:
        fh.write(dump_yaml(config))

    def both(msg: str) -> None:
        rundir.log(msg)
        log(msg)

    ctx = Context(config, rundir, both, progress)
    wanted = stages or config.stages
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    if "data" not in wanted and not (root / "data" / "meta.json").exists():
        wanted = ["data", *wanted]
    for name in STAGES:
        if name in wanted:
            t = time.perf_counter()
            STAGES[name](ctx)
            ctx.timings[name] = time.perf_counter() - t
    timings_file = root / "timings.json"
    prev = read_json(timings_file) if timings_file.exists() else {}
    write_json(timings_file, {**prev, **ctx.timings})
    return root
