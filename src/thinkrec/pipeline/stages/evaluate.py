"""The always-run evaluation: test metrics of every scorer and of the funnel's final lists, ``funnel.json``, and the
published generation (:mod:`thinkrec.pipeline.generations`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch

from thinkrec.eval.metrics import mean_metrics, rank_metrics
from thinkrec.eval.protocol import compute_ranks
from thinkrec.eval.stats import bootstrap_ci, paired_test
from thinkrec.pipeline.context import Context
from thinkrec.pipeline.scorers import SCORERS, active_scorers, candidate_sources
from thinkrec.pipeline.split import split_inputs
from thinkrec.pipeline.stages.rerank import load_lists
from thinkrec.pipeline.stages.scorers import source_node
from thinkrec.utils.io import atomic_path, read_json, write_json


def evaluated_scorers(ctx: Context) -> list[str]:
    """The config's scorers that this invocation trains, or that an earlier one trained and are up to date."""
    out = []
    for name in active_scorers(ctx.config):
        spec = SCORERS.get(name)
        if spec.stage in ctx.requested or ctx.graph.is_current(spec.folder(name)):
            out.append(name)
    return out


def evaluate_scorer(ctx: Context, name: str) -> tuple[np.ndarray, float]:
    """0-based test ranks of a scorer (the pipeline's full-ranking protocol) and the wall time."""
    ev = ctx.config.eval
    examples = ctx.get_split().test
    score, progress = ctx.scorer(name).score, ctx.stage_progress(f"evaluate {name}")
    if progress is not None:  # one step per batch of compute_ranks
        n_batches, done = max(1, -(-len(examples) // ev.batch_size)), [0]

        def score(users: torch.Tensor, tokens: torch.Tensor, _score: Callable = score) -> torch.Tensor:
            out = _score(users, tokens)
            done[0] += 1
            progress(done[0], n_batches)
            return out

    # a scorer's test ranks depend only on its artifacts, the split and the seen policy: reused while those hold
    # (a run that re-ranks again, or a benchmark variant sharing the node, does not rank the catalogue again)
    key = {"content": [(ctx.graph.marker(n) or {}).get("content") for n in (SCORERS.get(name).folder(name),
                                                                             source_node(name))],
           "exclude_seen": ctx.seen().exclude, "max_len": ctx.config.sasrec.max_len, **split_inputs(ctx.config)}
    cache = ctx.root / "eval" / "ranks" / f"{name}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == repr(key) and len(z["ranks"]) == len(examples):
                return z["ranks"].copy(), float(z["seconds"])
    t = time.perf_counter()
    ranks = compute_ranks(score, examples, ctx.config.sasrec.max_len, ev.batch_size, ctx.seen().exclude,
                          ctx.config.run.device)
    elapsed = time.perf_counter() - t
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ranks=ranks, key=np.array(repr(key)), seconds=np.array(elapsed))
    return ranks, elapsed


def run_evaluate(ctx: Context) -> None:
    """Test-set full ranking for every trained model, with bootstrap CIs and paired tests vs the best."""
    ev, split = ctx.config.eval, ctx.get_split()
    results: dict[str, Any] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for name in evaluated_scorers(ctx):
        ranks, elapsed = evaluate_scorer(ctx, name)
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
            for other in names if other != best}
    columns = {f"{n}/{k}": v for n, pu in per_user.items() for k, v in pu.items()}
    funnel = funnel_results(ctx, per_user, k_main)
    if funnel:
        results["funnel"] = funnel
        columns.update({f"{n}/{k}": v for n, pu in funnel.pop("per_user").items() for k, v in pu.items()})
        f = funnel["models"][funnel["final"]]["metrics"]
        ctx.log(f"evaluate: funnel (final list: {funnel['final']}) " + " ".join(f"{k}={v:.4f}" for k, v in f.items()))
    with atomic_path(ctx.root / "eval" / "per_user.parquet") as tmp:
        pl.DataFrame({"user": split.test.users, **columns}).write_parquet(tmp)
    write_json(ctx.root / "eval" / "metrics.json", results)
    write_json(ctx.root / "metrics.json", {"dataset": ctx.config.data.dataset, "split": split.kind, "test": results,
                                           "seen": ctx.seen().to_dict()})


def funnel_test_ranks(ctx: Context) -> dict[str, np.ndarray]:
    """0-based rank of each test target in each final list over the merged candidates (``inf`` = not among the
    candidates): ``candidates`` (the merge order) and every trained re-ranker's order."""
    from thinkrec.eval.metrics import first_hit_ranks

    lists_dir = ctx.root / "rerank" / "lists"
    if not (lists_dir / "compare").exists():  # candidates without merged re-ranking lists: the merge order only
        if not candidate_sources(ctx.config) or not ctx.graph.is_current("candidates"):
            return {}
        from thinkrec.retrieval.candidates import CandidateSet

        cand = CandidateSet.load(ctx.root / "candidates" / "test")
        return {"candidates": first_hit_ranks(cand.hits(ctx.get_split().test.targets))}
    test = load_lists(ctx, "test")[0]
    out = {"candidates": first_hit_ranks(test.labels)}
    for name in ctx.config.rerank.models:
        f = ctx.root / "rerank" / name / "per_list.npz"
        if name == "initial" or not f.exists():
            continue
        orders = np.load(f, allow_pickle=False)["orders"].astype(np.int64)
        shown = np.take_along_axis(test.labels, orders, 1) * np.take_along_axis(test.mask, orders, 1)
        out[name] = first_hit_ranks(shown)
    return out


def funnel_results(ctx: Context, single: dict[str, dict[str, np.ndarray]], k_main: str) -> dict[str, Any]:
    """The funnel's final lists on test (every test user; a target outside the candidates is a miss): metrics with
    CIs per configuration, the one :func:`choose_funnel` serves, paired tests against every single source."""
    from thinkrec.pipeline.funnel import choose_funnel

    ranks = funnel_test_ranks(ctx)
    if not ranks:
        return {}
    ev, seed = ctx.config.eval, ctx.config.run.seed
    record = choose_funnel(ctx.root, ctx.config)
    final = record.get("final", "candidates")
    models, per_user = {}, {}
    for name, r in ranks.items():
        pu = rank_metrics(r, ev.ks)
        label = "funnel-" + name
        per_user[label] = pu
        models[name] = {"metrics": mean_metrics(pu),
                        "ci95": {k: bootstrap_ci(v, ev.bootstrap, seed=seed)[1:] for k, v in pu.items()}}
    if final in single:  # a single source won on validation: the funnel serves it as it is
        per_user["funnel"] = single[final]
        models[final] = {"metrics": mean_metrics(single[final])}
    else:
        per_user["funnel"] = per_user["funnel-" + final]
    best_single = max(single, key=lambda n: float(single[n][k_main].mean())) if single else None
    tests = {f"funnel_vs_{n}": paired_test(per_user["funnel"][k_main], pu[k_main], ev.bootstrap, seed=seed)
             for n, pu in single.items() if n != final}
    return {"final": final, "why": record.get("final_why"), "best_single": best_single, "models": models,
            "paired_tests": tests, "metric": k_main, "per_user": per_user}


def run_funnel_record(ctx: Context) -> None:
    """``funnel.json``: which retriever and re-ranker :func:`thinkrec.load` uses, and why (validation figures)."""
    from thinkrec.pipeline.funnel import choose_funnel, funnel_nodes

    record = choose_funnel(ctx.root, ctx.config)
    # the contents of the nodes this evaluation measured: a loader refuses the record beside any other build
    built_on = {n: (ctx.graph.marker(n) or {}).get("content")
                for n in funnel_nodes(record, lambda s: ctx.graph.marker(SCORERS.get(s).folder(s)) is not None)}
    write_json(ctx.root / "funnel.json", {**record, "seen": ctx.seen().to_dict(), "built_on": built_on})


def publish_generation(ctx: Context) -> None:
    """After the evaluation: the run directory becomes the generation ``thinkrec.load`` reads
    (:mod:`thinkrec.pipeline.generations`) — if every node the recorded funnel serves is consistent; else the
    previous generation stays current and the log says which node is stale."""
    from thinkrec.pipeline.funnel import funnel_nodes
    from thinkrec.pipeline.generations import StaleNodeError, check_nodes, publish

    record = read_json(ctx.root / "funnel.json")
    try:
        check_nodes(ctx.root, funnel_nodes(record, lambda n: ctx.graph.marker(SCORERS.get(n).folder(n)) is not None))
    except StaleNodeError as exc:
        ctx.log(f"not published (the previous generation stays the one loaded): {exc}")
        return
    publish(ctx.root, ctx.log)
