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
from thinkrec.utils.config import config_hash, dump_yaml
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
    from thinkrec.retrieval.stage import train_one
    from thinkrec.retrieval.train import load_retriever
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
            ctx.scorers[name] = _generative_scorer(ctx, name, load_retriever(out / name, device), sids, out)
            continue

        def progress(step: int, total: int, name: str = name) -> None:
            if ctx.progress:
                ctx.progress(name, step, total)

        model, summary = train_one(name, ctx.get_split(), sids, cfg, out, device,
                                   log=lambda m, name=name: ctx.log(f"{name}: {m}"), progress=progress)
        ctx.scorers[name] = _generative_scorer(ctx, name, model, sids, out)
        ctx.rundir.mark_done(stage, key, **summary)


def _generative_scorer(ctx: Context, name: str, model: Any, sids: Any, out: Path) -> GenerativeScorer:
    """Beam-search scorer with the configured (or, ``rescore_weight: null``, validation-tuned) dense re-scoring."""
    from thinkrec.retrieval.stage import resolve_rescore_weight

    cfg = ctx.config.retrieval
    weight = resolve_rescore_weight(model, ctx.get_split(), sids, cfg, out / name, log=lambda m: ctx.log(f"{name}: {m}"))
    return GenerativeScorer(model, sids.sidmap, cfg.beam, weight)


def _load_trained_retrievers(ctx: Context) -> None:
    """Register retrievers trained in an earlier invocation (evaluate-only runs)."""
    from thinkrec.retrieval.train import load_retriever
    from thinkrec.tokenize.stage import load_tokenize

    root = ctx.rundir.root / "retrieval"
    names = [n for n in ctx.config.retrieval.models if (root / n / "model.safetensors").exists() and n not in ctx.scorers]
    if names:
        sids = load_tokenize(ctx.rundir.root / "sids")
        for n in names:
            ctx.scorers[n] = _generative_scorer(ctx, n, load_retriever(root / n, ctx.config.run.device), sids, root)


def _funnel_candidates(ctx: Context, which: str) -> tuple[str, Any]:
    """The retriever whose top-K the re-rankers re-order: named, or (auto) the generative retriever with the best
    validation NDCG@10, else SASRec."""
    _load_trained_retrievers(ctx)
    if which == "auto":
        root = ctx.rundir.root / "retrieval"
        trained = [n for n in ("s2gr", "tiger") if n in ctx.scorers and (root / n / "train_metrics.json").exists()]
        if trained:
            which = max(trained, key=lambda n: read_json(root / n / "train_metrics.json")["best_valid_ndcg@10"])
        else:
            which = "sasrec"
    if which == "sasrec" and "sasrec" not in ctx.scorers:
        stage_sasrec(ctx)
    if which not in ctx.scorers:
        raise ValueError(f"rerank.candidates: no trained {which!r} in {ctx.rundir.root} (train it first)")
    return which, ctx.scorers[which]


def stage_rerank(ctx: Context) -> None:
    """Stage 3: re-rank impression lists (when the dataset logs them) or the retriever's top-K lists."""
    from thinkrec.data.synthetic import ClickModel
    from thinkrec.rerank.lists import RerankLists, item_categories
    from thinkrec.rerank.stage import (
        fit_and_score,
        funnel_sets,
        impression_sets,
        load_reranker,
        save_reranker,
        scorer_top_k,
    )
    from thinkrec.rerank.train import train_evaluator

    cfg = ctx.config.rerank
    dataset = ctx.get_dataset()
    has_imps = dataset.impressions is not None and dataset.impressions.height > 0
    source = ("impressions" if has_imps else "funnel") if cfg.source == "auto" else cfg.source
    if source not in ("impressions", "funnel"):
        raise ValueError(f"rerank.source must be impressions, funnel or auto, got {cfg.source!r}")
    out = ctx.rundir.stage_dir("rerank")
    device = ctx.config.run.device
    lists_key: dict[str, Any] = {"data": ctx.config.data, "source": source, "k": cfg.k, "max_len": cfg.max_len,
                                 "history_len": cfg.history_len, "holdout": cfg.holdout_frac}
    item_vectors = None
    if (ctx.rundir.root / "sids" / "sidmap").exists():
        from thinkrec.tokenize.embed import embed_items
        from thinkrec.tokenize.stage import embed_config

        item_vectors = embed_items(dataset, embed_config(ctx.config.tokenize))  # cached by the tokenize stage
    if source == "funnel":
        which, scorer = _funnel_candidates(ctx, cfg.candidates)
        lists_key.update(candidates=which, retrieval=ctx.config.retrieval, tokenize=ctx.config.tokenize)
    if ctx.rundir.is_done("rerank/lists", lists_key):
        train, valid, test = (RerankLists.load(out / "lists" / p) for p in ("train", "valid", "test"))
    else:
        if source == "impressions":
            train, valid, test = impression_sets(dataset, cfg, item_vectors)
        else:
            train, valid, test = funnel_sets(ctx.get_split(), scorer_top_k(scorer, cfg.k, ctx.config.sasrec.max_len),
                                             item_categories(dataset), cfg, item_vectors, ctx.config.run.seed)
        for part, lists in (("train", train), ("valid", valid), ("test", test)):
            lists.save(out / "lists" / part)
        ctx.rundir.mark_done("rerank/lists", lists_key, train=len(train), valid=len(valid), test=len(test),
                             **({"candidates": lists_key["candidates"], "recall_at_k": test.meta["recall_at_k"]} if source == "funnel" else {}))
    ctx.log(f"rerank: {source} lists — {len(train)} train / {len(valid)} valid / {len(test)} test, up to {test.list_len} items")
    click_model = ClickModel.from_dataset(dataset) if dataset.meta.get("generator") == "thinkrec.data.synthetic" and source == "impressions" else None

    ev_key = {"lists": lists_key, "model": cfg.model, "train": cfg.train}
    if ctx.rundir.is_done("rerank/evaluator", ev_key):
        _, evaluator = load_reranker(out / "evaluator", train, device)
    else:
        evaluator, ev_hist = train_evaluator(train, valid, cfg.model, cfg.train, device, log=lambda m: ctx.log(f"rerank evaluator: {m}"))
        save_reranker(evaluator, "evaluator", out / "evaluator", ev_hist)
        ctx.rundir.mark_done("rerank/evaluator", ev_key, valid_logloss=min(h["valid_logloss"] for h in ev_hist), epochs=len(ev_hist))
    metrics_file = out / "metrics.json"
    results = read_json(metrics_file) if metrics_file.exists() else {}
    if results.get("lists_hash") != config_hash(ev_key):
        results = {"lists_hash": config_hash(ev_key), "models": {}, "profiles": {}}
    results.update(source=source, n_lists={"train": len(train), "valid": len(valid), "test": len(test)},
                   candidates=lists_key.get("candidates"))
    per_file = out / "per_list.npz"
    per_list = dict(np.load(per_file)) if per_file.exists() and results["models"] else {}
    for name in cfg.models:
        key = {**ev_key, "name": name}
        if ctx.rundir.is_done(f"rerank/{name}", key) and name in results["models"]:
            ctx.log(f"rerank: trained {name} found, skipping")
            continue
        fit = fit_and_score(name, train, valid, test, cfg.model, cfg.train, evaluator, click_model, device,
                            log=lambda m: ctx.log(f"rerank {m}"))
        if fit.model is not None:
            save_reranker(fit.model, name, out / name, fit.history)
        results["models"][name] = fit.metrics
        if fit.profile is not None:
            results["profiles"][name] = fit.profile
        per_list[name] = fit.per_list["ndcg@5"]
        with atomic_path(per_file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **per_list)
        write_json(metrics_file, results)
        ctx.rundir.mark_done(f"rerank/{name}", key, **{k: v for k, v in fit.metrics.items() if k in ("ndcg@5", "train_s")})
    if "eglr" in per_list:
        results["paired_tests_ndcg@5"] = {f"eglr_vs_{o}": paired_test(per_list["eglr"], v, ctx.config.eval.bootstrap, seed=ctx.config.run.seed)
                                          for o, v in per_list.items() if o != "eglr"}
    if results["profiles"]:
        from thinkrec.rerank.plots import plot_profiles

        results["plots"] = [str(p.relative_to(ctx.rundir.root)) for p in plot_profiles(results["profiles"], ctx.rundir.root / "plots")]
    write_json(metrics_file, results)


def stage_llm(ctx: Context) -> None:
    """Stage 4: the GR2 LLM re-ranker over the re-ranking stage's lists (SIDs from the tokenize stage)."""
    from thinkrec.llm.prompts import Catalogue
    from thinkrec.llm.stage import run_llm_stage
    from thinkrec.rerank.lists import RerankLists
    from thinkrec.tokenize.stage import load_tokenize

    lists_dir = ctx.rundir.root / "rerank" / "lists"
    if not (lists_dir / "test" / "lists.safetensors").exists() or not (ctx.rundir.root / "sids" / "sidmap").exists():
        raise ValueError(f"{ctx.rundir.root}: the llm stage needs the Semantic IDs and the re-ranking lists "
                         "(run the tokenize, retrieval and rerank stages first)")
    cfg = ctx.config.llm
    if ctx.config.run.device != "cpu" and cfg.device == "cpu":
        cfg.device = ctx.config.run.device
    key = {"llm": cfg, "rerank": ctx.config.rerank, "tokenize": ctx.config.tokenize, "data": ctx.config.data}
    if ctx.rundir.is_done("llm", key):
        ctx.log("llm: trained LLM re-ranker found, skipping")
        return
    dataset = ctx.get_dataset()
    catalogue = Catalogue.from_dataset(dataset, load_tokenize(ctx.rundir.root / "sids").sidmap.codes)
    split = ctx.get_split()
    sequences = [split.train_sequence(u) for u in range(split.n_users)]
    train, test = RerankLists.load(lists_dir / "train"), RerankLists.load(lists_dir / "test")
    summary = run_llm_stage(catalogue, train, test, sequences, cfg, ctx.rundir.stage_dir("llm"),
                            log=lambda m: ctx.log(f"llm: {m}"))
    ctx.rundir.mark_done("llm", key, **{f"{name}_ndcg@5": m["ndcg@5"] for name, m in summary["metrics"].items()})


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
    "rerank": stage_rerank,
    "llm": stage_llm,
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
