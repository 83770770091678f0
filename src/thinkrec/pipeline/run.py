"""The funnel as a stage graph over a run directory (see :mod:`thinkrec.pipeline.graph` for the cache rules).

Nodes: ``data`` → ``sids`` (Semantic IDs) → one node per next-item scorer (``popularity``, ``sasrec``,
``retrieval/<name>`` + ``retrieval/<name>/rescore``) → ``rerank/lists`` → ``rerank/evaluator`` →
``rerank/<model>`` → ``llm``. ``evaluate``, ``funnel`` (the record of which models the loaded funnel uses and
why) and ``report`` read what the nodes wrote and always run. The ``stages:`` names of a config map to node
groups (:data:`STAGE_NAMES`).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import SequenceSplit, make_split
from thinkrec.eval.metrics import mean_metrics, rank_metrics
from thinkrec.eval.protocol import compute_ranks
from thinkrec.eval.stats import bootstrap_ci, paired_test
from thinkrec.pipeline.config import RunConfig, check_run_config, dump_run_config, resolve
from thinkrec.pipeline.graph import Graph, Node
from thinkrec.pipeline.rundir import RunDir, storage_errors
from thinkrec.pipeline.scorers import SCORERS, active_scorers, candidate_sources
from thinkrec.utils import distributed as dist
from thinkrec.utils.io import atomic_file, atomic_path, read_json, write_json
from thinkrec.utils.progress import progress_callback

STAGE_NAMES = ("data", "popularity", "sasrec", "tokenize", "retrieval", "candidates", "rerank", "llm", "evaluate", "report")


@dataclass
class Context:
    """What stages share in memory during one invocation (everything is also on disk)."""

    config: RunConfig  # resolved: every stage's seed and device set from run.seed / run.device
    rundir: RunDir
    log: Callable[[str], None]
    progress: Callable[[str, int, int], None] | None = None
    requested: list[str] = field(default_factory=list)
    dataset: Dataset | None = None
    split: SequenceSplit | None = None
    scorers: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    graph: Graph | None = None
    data_checked: bool = False  # the data pre-flight ran (thinkrec.pipeline.preflight)
    _seen: Any = None  # the resolved seen-item policy (Context.seen)

    @property
    def root(self) -> Path:
        return self.rundir.root

    def get_dataset(self) -> Dataset:
        if self.dataset is None:
            self.graph.ensure("data")
            if self.dataset is None:  # up to date: read back, not rebuilt
                dataset = Dataset.load(self.root / "data")
                self.check_data(dataset)
                self.dataset = dataset
        return self.dataset

    def check_data(self, dataset: Dataset) -> None:
        """Once per invocation, before any model trains: what the requested stages need of the data
        (:func:`thinkrec.pipeline.preflight.check_data`); keeps the split it computes."""
        if not self.data_checked:
            from thinkrec.pipeline.preflight import check_data

            split = split_of(dataset, self.config)
            check_data(dataset, self.config, self.requested, split)
            self.split, self.data_checked = split, True

    def get_split(self) -> SequenceSplit:
        if self.split is None:
            self.split = split_of(self.get_dataset(), self.config)
        return self.split

    def checkpoints(self, part: str) -> Path:
        """A folder for one trainer's checkpoint inside the running node's checkpoint folder."""
        return self.graph.checkpoint_dir() / part

    def stage_progress(self, name: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        return lambda step, total: self.progress(name, step, total)

    def scorer(self, name: str) -> Any:
        """A trained scorer, loaded from its folder alone (trained first if it is not up to date)."""
        if name not in self.scorers:
            spec = SCORERS.get(name)
            node = spec.folder(name)
            self.graph.ensure(f"{node}/rescore" if spec.generative else node)
            self.scorers[name] = spec.load(self.root / node, self.config.run.device)
        return self.scorers[name]

    def seen(self) -> Any:
        """The run's seen-item policy resolved on the training split (:mod:`thinkrec.data.seen`)."""
        from thinkrec.data.seen import resolve_seen

        if self._seen is None:
            split, ev = self.get_split(), self.config.eval
            self._seen = resolve_seen(ev.seen, ev.seen_threshold, split.train_offsets, split.train_items)
        return self._seen

    def rerank_source(self) -> str:
        cfg = self.config.rerank
        if cfg.source == "auto":
            imps = self.get_dataset().impressions
            return "impressions" if imps is not None and imps.height > 0 else "funnel"
        return cfg.source


def split_of(dataset: Dataset, config: RunConfig) -> SequenceSplit:
    d = config.data
    temporal = d.split.startswith(("temporal", "global"))
    kwargs = {"valid_frac": d.valid_frac, "test_frac": d.test_frac} if temporal else {}
    return make_split(dataset, d.split, **kwargs)


def _split_inputs(ctx: Context) -> dict[str, Any]:
    d = ctx.config.data
    return {"split": d.split, "valid_frac": d.valid_frac, "test_frac": d.test_frac}


# ---------------------------------------------------------------------------------------------- data, SIDs, scorers
def _data_inputs(ctx: Context) -> dict[str, Any]:
    d = ctx.config.data
    return {"dataset": d.dataset, "data_root": d.data_root, "format": d.format, "options": d.options}


def run_data(ctx: Context) -> dict[str, Any]:
    from thinkrec.data.registry import load_dataset

    d = ctx.config.data
    dataset = load_dataset(d.dataset, d.data_root, format=d.format, **d.options)
    ctx.split, ctx.data_checked, ctx._seen = None, False, None
    ctx.check_data(dataset)  # before it is saved and anything trains on it
    dataset.save(ctx.root / "data")
    ctx.dataset = dataset
    ctx.log(f"data: {d.dataset} → {dataset.n_users} users, {dataset.n_items} items, {dataset.n_interactions} interactions")
    return {"stats": dataset.stats()}


def run_sids(ctx: Context) -> dict[str, Any]:
    from thinkrec.tokenize.stage import run_tokenize

    art = run_tokenize(ctx.get_dataset(), ctx.get_split(), ctx.config.tokenize, ctx.root / "sids", log=ctx.log,
                       checkpoint_dir=ctx.checkpoints("quantizer"))
    return {"unique_before_dedup": art.report["unique_before_dedup"]}


def _scorer_node(name: str) -> Node:
    spec = SCORERS.get(name)
    folder = spec.folder(name)
    artifacts = (f"{folder}/model.safetensors", f"{folder}/config.json") + ((f"{folder}/sidmap",) if spec.generative else ())
    return Node(folder, lambda ctx: spec.inputs(ctx.config, name),
                lambda ctx: ["data", "sids"] if spec.needs_sids else ["data"], artifacts,
                lambda ctx: spec.train(ctx, name, ctx.root / folder), distributed=spec.distributed)


def _rescore_node(name: str) -> Node:
    folder = SCORERS.get(name).folder(name)

    def run(ctx: Context) -> dict[str, Any]:
        from thinkrec.retrieval.stage import resolve_rescore_weight
        from thinkrec.retrieval.train import load_retriever
        from thinkrec.tokenize.sids import SIDMap

        model = load_retriever(ctx.root / folder, ctx.config.run.device)
        weight = resolve_rescore_weight(model, ctx.get_split(), SIDMap.load(ctx.root / folder / "sidmap"),
                                        ctx.config.retrieval, ctx.root / folder, log=lambda m: ctx.log(f"{name}: {m}"))
        return {"weight": weight, "beam": ctx.config.retrieval.beam}

    def inputs(ctx: Context) -> dict[str, Any]:
        r = ctx.config.retrieval
        return {"beam": r.beam, "rescore_weight": r.rescore_weight, "valid_users": r.train.valid_users,
                "seed": r.train.seed, "grid": list(_rescore_grid()), **_split_inputs(ctx)}

    return Node(f"{folder}/rescore", inputs, lambda ctx: [folder], (f"{folder}/rescore.json",), run)


def _rescore_grid() -> tuple[float, ...]:
    from thinkrec.retrieval.stage import RESCORE_GRID

    return RESCORE_GRID


# ---------------------------------------------------------------------------------------------- merged candidates
def _source_node(name: str) -> str:
    spec = SCORERS.get(name, "candidates.sources")
    return f"{spec.folder(name)}/rescore" if spec.generative else spec.folder(name)


def _candidates_inputs(ctx: Context) -> dict[str, Any]:
    c = ctx.config.candidates
    return {"sources": candidate_sources(ctx.config), "k": c.k, "per_source": c.per_source,
            "quotas": c.quotas_for(candidate_sources(ctx.config)),
            "exclude_seen": ctx.seen().exclude, "max_len": ctx.config.sasrec.max_len, **_split_inputs(ctx)}


def run_candidates(ctx: Context) -> dict[str, Any]:
    """``candidates/{valid,test}``: every source's top-k for the validation and test examples, merged to K."""
    from thinkrec.retrieval.candidates import merge_candidates, scorer_top_k

    c, split = ctx.config.candidates, ctx.get_split()
    c.check()
    sources = candidate_sources(ctx.config)
    per_k = c.per_source or c.k
    quotas = c.quotas_for(sources)
    info: dict[str, Any] = {"sources": sources, "k": c.k, "per_source": per_k, "quotas": quotas}
    for part in ("valid", "test"):
        examples = getattr(split, part)
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in sources:
            t = time.perf_counter()
            per[name] = scorer_top_k(ctx.scorer(name), per_k, ctx.config.sasrec.max_len,
                                     exclude_seen=ctx.seen().exclude)(examples)
            info.setdefault("source_s", {}).setdefault(name, 0.0)
            info["source_s"][name] += time.perf_counter() - t
        merged = merge_candidates(per, c.k, quotas).with_targets(per, examples.targets)
        merged.save(ctx.root / "candidates" / part)
        hits = {name: ((it == examples.targets[:, None]) & (it >= 0)) for name, (it, _) in per.items()}
        info[part] = {
            "requests": len(merged),
            f"recall@{c.k}": merged.recall(examples.targets),
            "recall@10": merged.recall(examples.targets, 10),
            "source_recall": {n: float(h[:, : c.k].any(1).mean()) for n, h in hits.items()},  # each source's own top-K
            "source_recall@10": {n: float(h[:, :10].any(1).mean()) for n, h in hits.items()},
            "source_recall_in_merged": merged.source_recall(examples.targets),
            # what each source adds: the merged recall@K without it (a source stays only where this drops, on valid)
            f"recall@{c.k}_without": {
                name: merge_candidates({n: v for n, v in per.items() if n != name}, c.k,
                                       {n: q for n, q in quotas.items() if n != name}).recall(examples.targets)
                for name in sources if len(sources) > 1 and any(q > 0 for n, q in quotas.items() if n != name)},
        }
        if part == "valid":  # the merge order and each source alone on validation (the funnel's choice without lists)
            info["valid_compare"] = _compare_single_sources(merged, merged, np.arange(len(merged)), examples.targets)
        ctx.log(f"candidates ({part}): recall@{c.k} merged {info[part][f'recall@{c.k}']:.4f}; "
                + ", ".join(f"{n} {v:.4f}" for n, v in info[part]["source_recall"].items()))
    write_json(ctx.root / "candidates" / "info.json", info)
    return {"valid_recall": info["valid"][f"recall@{c.k}"], "test_recall": info["test"][f"recall@{c.k}"]}


def _merged(ctx: Context) -> bool:
    """Re-ranking lists come from the merged candidates (a funnel run with the candidate stage)."""
    return ctx.rerank_source() == "funnel" and bool(candidate_sources(ctx.config))


# ---------------------------------------------------------------------------------------------- re-ranking
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
    if _merged(ctx):
        return ups + ["candidates"]
    return ups + (_candidate_nodes(ctx) if ctx.rerank_source() == "funnel" else [])


def _lists_inputs(ctx: Context) -> dict[str, Any]:
    from thinkrec.tokenize.stage import embed_config

    r = ctx.config.rerank
    out = {"source": ctx.rerank_source(), "k": r.k, "max_len": r.max_len, "history_len": r.history_len,
           "holdout_frac": r.holdout_frac, "compare_frac": r.compare_frac, "candidates": r.candidates,
           "seed": r.train.seed, "exclude_seen": ctx.seen().exclude, "feature_groups": r.feature_groups,
           **_split_inputs(ctx)}
    if _merged(ctx):
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
    from thinkrec.rerank.stage import funnel_sets, impression_sets, scorer_top_k

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
    elif _merged(ctx):
        from thinkrec.rerank.stage import merged_sets
        from thinkrec.retrieval.candidates import CandidateSet

        cand = {p: CandidateSet.load(ctx.root / "candidates" / p) for p in ("valid", "test")}
        train, valid, compare, test, featurizer = merged_sets(ctx.get_split(), cand["valid"], cand["test"],
                                                              item_categories(dataset), cfg, item_vectors, cfg.train.seed,
                                                              tables)
        info = {"candidates": "merged", "sources": list(cand["test"].sources), "recall_at_k": test.meta["recall_at_k"],
                "compare": _compare_single_sources(compare, cand["valid"], np.asarray(compare.meta["rows"]))}
    else:
        which = _choose_candidates(ctx)
        top_k = scorer_top_k(ctx.scorer(which), cfg.k, ctx.config.sasrec.max_len, exclude_seen=ctx.seen().exclude)
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


def _comparison_lists(ctx: Context) -> Any:
    """The validation slice on which stages are compared with their input: ``compare`` (merged-candidate lists,
    disjoint from the training and early-stopping lists), else the early-stopping hold-out."""
    part = "compare" if (ctx.root / "rerank" / "lists" / "compare" / "lists.safetensors").exists() else "valid"
    return _load_lists(ctx, part)[0]


def _compare_single_sources(compare: Any, valid: Any, rows: np.ndarray, targets: np.ndarray | None = None
                            ) -> dict[str, Any]:
    """N@5/10 on the comparison slice of the merge order (``candidates``) and of each source alone (its own
    ranking of the target, before merging), so a merge that loses to one of its sources shows. ``compare``: the
    slice's lists (or a CandidateSet with the slice's ``targets``); ``rows``: the slice's rows in ``valid``."""
    from thinkrec.eval.metrics import first_hit_ranks

    rows = np.asarray(rows, dtype=np.int64)
    labels = compare.labels if targets is None else compare.hits(targets)
    out = {"candidates": {k: float(v.mean()) for k, v in rank_metrics(first_hit_ranks(labels), (5, 10)).items()}}
    tr = valid.target_ranks[rows]
    for i, name in enumerate(valid.sources):
        r = np.where(tr[:, i] >= 0, tr[:, i], np.inf)
        out[name] = {k: float(v.mean()) for k, v in rank_metrics(r, (5, 10)).items()}
    return out


def _load_lists(ctx: Context, *parts: str) -> list[Any]:
    from thinkrec.rerank.lists import RerankLists

    return [RerankLists.load(ctx.root / "rerank" / "lists" / p) for p in parts]


def run_evaluator(ctx: Context) -> dict[str, Any]:
    from thinkrec.rerank.stage import save_reranker
    from thinkrec.rerank.train import train_evaluator

    cfg = ctx.config.rerank
    train, valid = _load_lists(ctx, "train", "valid")
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
        train, valid, test = _load_lists(ctx, "train", "valid", "test")
        _, evaluator = load_reranker(ctx.root / "rerank" / "evaluator", device)
        fit = fit_and_score(name, train, valid, test, cfg.model, cfg.train, evaluator, _click_model(ctx), device,
                            log=ctx.log, checkpoint_dir=ctx.checkpoints("model"))
        if not dist.is_main():  # torchrun: every rank trained, rank 0 scores and writes
            return {}
        compare = _comparison_lists(ctx)
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
                (f"rerank/{name}/config.json", f"rerank/{name}/metrics.json"), run, distributed=True)


def summarize_rerank(ctx: Context) -> None:
    """``rerank/metrics.json``: every configured re-ranker's test metrics, paired tests of EGLR, profile plots."""
    cfg = ctx.config.rerank
    out = ctx.root / "rerank"
    info = read_json(out / "lists" / "info.json")
    n_lists = {p: len(ls) for p, ls in zip(("train", "valid", "test"), _load_lists(ctx, "train", "valid", "test"), strict=True)}
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


# ---------------------------------------------------------------------------------------------- LLM
def llm_pre_ranker(ctx: Context) -> str:
    """The re-ranker whose order the LLM re-orders (``llm.pre_rank``): for ``funnel`` the configured one with the
    best comparison-slice N@5 (what the funnel serves; ``initial`` when none beat the lists' own order)."""
    want = ctx.config.llm.pre_rank
    if want != "funnel":
        return want
    valid = {m: read_json(ctx.root / "rerank" / m / "metrics.json")["valid"]["ndcg@5"] for m in ctx.config.rerank.models}
    return max(valid, key=lambda n: (round(valid[n], 6), n == "initial")) if valid else "initial"


def _llm_upstream(ctx: Context) -> list[str]:
    want = ctx.config.llm.pre_rank
    models = ctx.config.rerank.models if want == "funnel" else [] if want == "initial" else [want]
    return ["rerank/lists", "sids", "data", *(f"rerank/{m}" for m in models)]


def llm_inputs(ctx: Context) -> tuple[Any, list[np.ndarray], Any, Any, Any, str]:
    """What stage 4 reads: the catalogue, the training sequences, the train / valid / test lists in the pre-rank
    order (``llm.pre_rank``; the funnel's final list by default) and that pre-ranker's name."""
    from thinkrec.llm.prompts import Catalogue
    from thinkrec.tokenize.sids import SIDMap

    catalogue = Catalogue.from_dataset(ctx.get_dataset(), SIDMap.load(ctx.root / "sids" / "sidmap").codes)
    split = ctx.get_split()
    sequences = [split.train_sequence(u) for u in range(split.n_users)]
    train, valid, test = _load_lists(ctx, "train", "valid", "test")
    name = llm_pre_ranker(ctx)
    if name != "initial":  # the LLM re-orders the top-K of that re-ranker's order (the funnel's final list)
        from thinkrec.rerank.stage import load_reranker
        from thinkrec.rerank.train import rerank_orders

        _, model = load_reranker(ctx.root / "rerank" / name, ctx.config.run.device)
        train, valid, test = (ls.reordered(rerank_orders(model, ls, device=ctx.config.run.device))
                              for ls in (train, valid, test))
    return catalogue, sequences, train, valid, test, name


def run_llm(ctx: Context) -> dict[str, Any]:
    from thinkrec.llm.stage import run_llm_stage

    catalogue, sequences, train, valid, test, name = llm_inputs(ctx)
    ctx.log(f"llm: pre-rank order = {name}")
    summary = run_llm_stage(catalogue, train, test, sequences, ctx.config.llm, ctx.root / "llm",
                            log=lambda m: ctx.log(f"llm: {m}"), checkpoint_dir=ctx.checkpoints("stage"),
                            valid_lists=valid)
    return {f"{name}_ndcg@5": m["ndcg@5"] for name, m in summary["metrics"].items()}


# ---------------------------------------------------------------------------------------------- evaluation
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
                                                                             _source_node(name))],
           "exclude_seen": ctx.seen().exclude, "max_len": ctx.config.sasrec.max_len, **_split_inputs(ctx)}
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
    test = _load_lists(ctx, "test")[0]
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
    from thinkrec.pipeline.funnel import choose_funnel

    write_json(ctx.root / "funnel.json", {**choose_funnel(ctx.root, ctx.config), "seen": ctx.seen().to_dict()})


def run_report(ctx: Context) -> None:
    from thinkrec.pipeline.report import write_report
    from thinkrec.pipeline.report_html import write_html_report

    # timings.json is written when the invocation ends: the reports show it with this invocation's stages so far
    path = ctx.root / "timings.json"
    timings = {**(read_json(path) if path.exists() else {}), **ctx.timings}
    write_report(ctx.root, ctx.config, timings)
    html = write_html_report(ctx.root, ctx.config, timings)
    ctx.log(f"report: {ctx.root / 'report.md'}, {html}")


# ---------------------------------------------------------------------------------------------- the graph
def build_nodes() -> list[Node]:
    from thinkrec.rerank.train import RERANK_MODELS

    nodes = [
        Node("data", _data_inputs, lambda ctx: [], ("data",), run_data),
        Node("sids", lambda ctx: {"tokenize": ctx.config.tokenize, **_split_inputs(ctx)}, lambda ctx: ["data"],
             ("sids/codes.parquet", "sids/sidmap", "sids/quantizer"), run_sids),
    ]
    for entry in SCORERS.entries():
        nodes.append(_scorer_node(entry.name))
        if entry.obj.generative:
            nodes.append(_rescore_node(entry.name))
    nodes += [
        Node("candidates", _candidates_inputs, lambda ctx: [_source_node(n) for n in candidate_sources(ctx.config)],
             ("candidates",), run_candidates),
        Node("rerank/lists", _lists_inputs, _lists_upstream, ("rerank/lists", "rerank/featurizer"), run_lists),
        Node("rerank/evaluator", lambda ctx: {"model": ctx.config.rerank.model, "train": ctx.config.rerank.train},
             lambda ctx: ["rerank/lists"], ("rerank/evaluator",), run_evaluator, distributed=True),
        *(_reranker_node(m) for m in RERANK_MODELS),
        Node("llm", lambda ctx: {"llm": ctx.config.llm}, _llm_upstream,
             ("llm/metrics.json",), run_llm, distributed=True),  # data-parallel (thinkrec.llm.parallel)
    ]
    return nodes


def _stage_steps(ctx: Context, stage: str) -> list[Callable[[], Any]]:
    """What a ``stages:`` entry does: nodes to bring up to date, then any always-run step."""
    cfg, g = ctx.config, ctx.graph

    def nodes(*names: str) -> list[Callable[[], Any]]:
        return [lambda n=n: g.ensure(n) for n in names]

    def on_main(*steps: Callable[[], Any]) -> list[Callable[[], Any]]:
        """Steps that read what the nodes wrote and write summaries: rank 0 alone under torchrun."""
        return [lambda f=f: _on_main(ctx, f) for f in steps]

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
                *on_main(lambda: summarize_rerank(ctx))]
    if stage == "llm":
        return nodes("llm")
    if stage == "evaluate":
        return on_main(lambda: run_evaluate(ctx), lambda: run_funnel_record(ctx))
    if stage == "report":
        return on_main(lambda: run_report(ctx))
    raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_NAMES)}")


def _on_main(ctx: Context, step: Callable[[], Any]) -> None:
    """``step()`` on rank 0 alone (working :func:`~thinkrec.utils.distributed.solo`), the other ranks waiting."""
    if dist.is_main():
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
