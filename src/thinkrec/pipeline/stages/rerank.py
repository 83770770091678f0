"""Nodes ``rerank/lists`` (lists + featurizer), ``rerank/evaluator`` and ``rerank/<model>``; the stage's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.eval.stats import paired_test
from thinkrec.pipeline.context import Context
from thinkrec.pipeline.graph import Node
from thinkrec.pipeline.scorers import SCORERS, candidate_sources
from thinkrec.pipeline.split import split_inputs
from thinkrec.pipeline.stages.candidates import compare_single_sources
from thinkrec.utils import distributed as dist
from thinkrec.utils.io import atomic_path, read_json, write_json


def merged_lists(ctx: Context) -> bool:
    """Re-ranking lists come from the merged candidates (a funnel run with the candidate stage)."""
    return ctx.rerank_source() == "funnel" and bool(candidate_sources(ctx.config))


def _uses_vectors(ctx: Context) -> bool:
    """Candidate features use the item vectors when the run builds Semantic IDs (the same vectors)."""
    return "tokenize" in ctx.config.stages


def _candidate_nodes(ctx: Context) -> list[str]:
    which = ctx.config.rerank.candidates
    if which == "auto":
        names = list(ctx.config.retrieval.models) if "retrieval" in ctx.config.stages else []
        names = names or ["sasrec"]
    else:
        names = [which]
    out = []
    for n in names:
        spec = SCORERS.get(n, "rerank.candidates")
        out.append(f"{spec.folder(n)}/rescore" if spec.generative else spec.folder(n))
    return out


def _lists_upstream(ctx: Context) -> list[str]:
    ups = ["data"] + (["sids"] if _uses_vectors(ctx) else [])
    if merged_lists(ctx):
        return ups + ["candidates"]
    return ups + (_candidate_nodes(ctx) if ctx.rerank_source() == "funnel" else [])


def _lists_inputs(ctx: Context) -> dict[str, Any]:
    from thinkrec.tokenize.stage import embed_config

    r = ctx.config.rerank
    out = {"source": ctx.rerank_source(), "k": r.k, "max_len": r.max_len, "history_len": r.history_len,
           "holdout_frac": r.holdout_frac, "compare_frac": r.compare_frac, "candidates": r.candidates,
           "seed": r.train.seed, "exclude_seen": ctx.seen().exclude, "feature_groups": r.feature_groups,
           **split_inputs(ctx.config)}
    if merged_lists(ctx):
        out.update(k=ctx.config.candidates.k, candidates="merged", source_features=r.source_features)
    if _uses_vectors(ctx):
        out["embed"] = embed_config(ctx.config.tokenize)
    if out["source"] == "funnel":
        out["sasrec_max_len"] = ctx.config.sasrec.max_len
    return out


def _choose_candidates(ctx: Context) -> str:
    """``rerank.candidates``, or (auto) the generative retriever with the best validation N@10, else SASRec."""
    which = ctx.config.rerank.candidates
    if which != "auto":
        return which
    trained = [Path(n).parent.name for n in _candidate_nodes(ctx) if n.endswith("/rescore")]
    if not trained:
        return "sasrec"
    return max(trained, key=lambda n: read_json(ctx.root / SCORERS.get(n).folder(n) / "train_metrics.json")["best_valid_ndcg@10"])


def run_lists(ctx: Context) -> dict[str, Any]:
    from thinkrec.rerank.lists import item_categories, item_tables
    from thinkrec.rerank.stage import funnel_sets, impression_sets
    from thinkrec.retrieval.candidates import scorer_top_k

    cfg, dataset = ctx.config.rerank, ctx.get_dataset()
    item_vectors = None
    sid_codes = None
    if _uses_vectors(ctx):
        from thinkrec.tokenize.embed import embed_items
        from thinkrec.tokenize.sids import SIDMap
        from thinkrec.tokenize.stage import embed_config

        item_vectors = embed_items(dataset, embed_config(ctx.config.tokenize))  # cached by the tokenize stage
        sid_codes = SIDMap.load(ctx.root / "sids" / "sidmap").codes  # the sid feature group
    tables = item_tables(dataset, sid_codes)
    source, info, compare = ctx.rerank_source(), {}, None
    if source == "impressions":
        train, valid, test, featurizer = impression_sets(dataset, cfg, item_vectors)
    elif merged_lists(ctx):
        from thinkrec.rerank.stage import merged_sets
        from thinkrec.retrieval.candidates import CandidateSet

        cand = {p: CandidateSet.load(ctx.root / "candidates" / p) for p in ("valid", "test")}
        train, valid, compare, test, featurizer = merged_sets(ctx.get_split(), cand["valid"], cand["test"],
                                                              item_categories(dataset), cfg, item_vectors, cfg.train.seed,
                                                              tables)
        info = {"candidates": "merged", "sources": list(cand["test"].sources), "recall_at_k": test.meta["recall_at_k"],
                "compare": compare_single_sources(compare, cand["valid"], np.asarray(compare.meta["rows"]))}
    else:
        which = _choose_candidates(ctx)
        top_k = scorer_top_k(ctx.scorer(which), cfg.k, ctx.config.sasrec.max_len, exclude_seen=ctx.seen().exclude,
                             device=ctx.config.run.device)
        train, valid, test, featurizer = funnel_sets(ctx.get_split(), top_k, item_categories(dataset), cfg,
                                                     item_vectors, cfg.train.seed, tables)
        info = {"candidates": which, "recall_at_k": test.meta["recall_at_k"]}
    out = ctx.root / "rerank"
    parts = [("train", train), ("valid", valid), ("test", test)] + ([("compare", compare)] if compare is not None else [])
    for part, lists in parts:
        lists.save(out / "lists" / part)
    featurizer.save(out / "featurizer")
    info["features"] = list(featurizer.feature_names)
    write_json(out / "lists" / "info.json", {"source": source, **info})
    ctx.log(f"rerank: {source} lists — {len(train)} train / {len(valid)} valid / "
            + (f"{len(compare)} compare / " if compare is not None else "") + f"{len(test)} test, up to {test.list_len} items")
    return {"source": source, "train": len(train), "valid": len(valid), "test": len(test),
            **({"compare": len(compare)} if compare is not None else {}), **info}


def comparison_lists(ctx: Context) -> Any:
    """The validation slice on which stages are compared with their input: ``compare`` (merged-candidate lists,
    disjoint from the training and early-stopping lists), else the early-stopping hold-out."""
    part = "compare" if (ctx.root / "rerank" / "lists" / "compare" / "lists.safetensors").exists() else "valid"
    return load_lists(ctx, part)[0]


def load_lists(ctx: Context, *parts: str) -> list[Any]:
    from thinkrec.rerank.lists import RerankLists

    return [RerankLists.load(ctx.root / "rerank" / "lists" / p) for p in parts]


def run_evaluator(ctx: Context) -> dict[str, Any]:
    from thinkrec.rerank.stage import save_reranker
    from thinkrec.rerank.train import train_evaluator

    cfg = ctx.config.rerank
    train, valid = load_lists(ctx, "train", "valid")
    evaluator, hist = train_evaluator(train, valid, cfg.model, cfg.train, ctx.config.run.device,
                                      log=lambda m: ctx.log(f"rerank evaluator: {m}"),
                                      checkpoint_dir=ctx.checkpoints("evaluator"))
    if not dist.is_main():  # torchrun: every rank trained, rank 0 writes
        return {}
    save_reranker(evaluator, "evaluator", ctx.root / "rerank" / "evaluator", hist, train.list_len)
    return {"valid_logloss": min(h["valid_logloss"] for h in hist), "epochs": len(hist)}


def _click_model(ctx: Context) -> Any:
    from thinkrec.data.synthetic import ClickModel

    dataset = ctx.get_dataset()
    if dataset.meta.get("generator") == "thinkrec.data.synthetic" and ctx.rerank_source() == "impressions":
        return ClickModel.from_dataset(dataset)
    return None


def _reranker_node(name: str) -> Node:
    def run(ctx: Context) -> dict[str, Any]:
        from thinkrec.rerank.stage import fit_and_score, load_reranker, save_reranker
        from thinkrec.rerank.train import order_metrics, rerank_orders

        cfg, device, out = ctx.config.rerank, ctx.config.run.device, ctx.root / "rerank" / name
        train, valid, test = load_lists(ctx, "train", "valid", "test")
        _, evaluator = load_reranker(ctx.root / "rerank" / "evaluator", device)
        fit = fit_and_score(name, train, valid, test, cfg.model, cfg.train, evaluator, _click_model(ctx), device,
                            log=ctx.log, checkpoint_dir=ctx.checkpoints("model"))
        if not dist.is_main():  # torchrun: every rank trained, rank 0 scores and writes
            return {}
        compare = comparison_lists(ctx)
        cmp = order_metrics(compare, rerank_orders(fit.model, compare, device=device), (5, 10))
        valid_m = {k: float(v.mean()) for k, v in cmp.items()}
        save_reranker(fit.model, name, out, fit.history, train.list_len)
        write_json(out / "metrics.json", {"test": fit.metrics, "valid": valid_m, "profile": fit.profile})
        with atomic_path(out / "per_list.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ndcg5=fit.per_list["ndcg@5"], orders=fit.orders.astype(np.int16))
        return {"ndcg@5": fit.metrics["ndcg@5"], "valid_ndcg@5": valid_m["ndcg@5"], "train_s": fit.metrics["train_s"]}

    def inputs(ctx: Context) -> dict[str, Any]:
        return {"name": name, "model": ctx.config.rerank.model, "train": ctx.config.rerank.train}

    return Node(f"rerank/{name}", inputs, lambda ctx: ["rerank/lists", "rerank/evaluator"],
                (f"rerank/{name}",), run, distributed=True, homes=(f"rerank/{name}",))


def summarize_rerank(ctx: Context) -> None:
    """``rerank/metrics.json``: every configured re-ranker's test metrics, paired tests of EGLR, profile plots."""
    cfg = ctx.config.rerank
    out = ctx.root / "rerank"
    info = read_json(out / "lists" / "info.json")
    n_lists = {p: len(ls) for p, ls in zip(("train", "valid", "test"), load_lists(ctx, "train", "valid", "test"), strict=True)}
    results: dict[str, Any] = {"source": info["source"], "candidates": info.get("candidates"), "n_lists": n_lists,
                               "models": {}, "valid": {}, "profiles": {}}
    per_list = {}
    for name in cfg.models:
        m = read_json(out / name / "metrics.json")
        results["models"][name], results["valid"][name] = m["test"], m["valid"]
        if m.get("profile"):
            results["profiles"][name] = m["profile"]
        per_list[name] = np.load(out / name / "per_list.npz", allow_pickle=False)["ndcg5"]
    if "eglr" in per_list:
        results["paired_tests_ndcg@5"] = {
            f"eglr_vs_{o}": paired_test(per_list["eglr"], v, ctx.config.eval.bootstrap, seed=ctx.config.run.seed)
            for o, v in per_list.items() if o != "eglr"}
    if results["profiles"]:
        from thinkrec.rerank.plots import plot_profiles

        results["plots"] = [str(p.relative_to(ctx.root)) for p in plot_profiles(results["profiles"], ctx.root / "plots")]
    write_json(out / "metrics.json", results)


def nodes() -> list[Node]:
    from thinkrec.rerank.train import RERANK_MODELS

    return [
        Node("rerank/lists", _lists_inputs, _lists_upstream, ("rerank/lists", "rerank/featurizer"), run_lists,
             homes=("rerank/lists", "rerank/featurizer")),
        Node("rerank/evaluator", lambda ctx: {"model": ctx.config.rerank.model, "train": ctx.config.rerank.train},
             lambda ctx: ["rerank/lists"], ("rerank/evaluator",), run_evaluator, distributed=True,
             homes=("rerank/evaluator",)),
        *(_reranker_node(m) for m in RERANK_MODELS),
    ]
