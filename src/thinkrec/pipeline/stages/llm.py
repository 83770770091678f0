"""Node ``llm``: stage 4 (GR2) on the re-ranking lists in the pre-rank order."""

from __future__ import annotations

from typing import Any

import numpy as np

from thinkrec.pipeline.context import Context
from thinkrec.pipeline.graph import Node
from thinkrec.pipeline.stages.rerank import load_lists
from thinkrec.utils.io import read_json
from thinkrec.utils.selection import select_best


def llm_pre_ranker(ctx: Context) -> str:
    """The re-ranker whose order the LLM re-orders (``llm.pre_rank``): for ``funnel`` the configured one with the
    best comparison-slice N@5 (what the funnel serves; ``initial`` when none beat the lists' own order)."""
    want = ctx.config.llm.pre_rank
    if want != "funnel":
        return want
    valid = {m: read_json(ctx.root / "rerank" / m / "metrics.json")["valid"]["ndcg@5"] for m in ctx.config.rerank.models}
    return select_best(valid, prefer=("initial",)) if valid else "initial"


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
    train, valid, test = load_lists(ctx, "train", "valid", "test")
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


def nodes() -> list[Node]:
    return [Node("llm", lambda ctx: {"llm": ctx.config.llm}, _llm_upstream, ("llm/metrics.json",), run_llm,
                 distributed=True, homes=("llm",))]  # data-parallel (thinkrec.llm.parallel)
