"""Node ``candidates``: every source's top-k for the validation and test examples, merged into K per request."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from thinkrec.eval.metrics import rank_metrics
from thinkrec.pipeline.context import Context
from thinkrec.pipeline.graph import Node
from thinkrec.pipeline.scorers import candidate_sources
from thinkrec.pipeline.split import split_inputs
from thinkrec.pipeline.stages.scorers import source_node
from thinkrec.utils.io import write_json


def _candidates_inputs(ctx: Context) -> dict[str, Any]:
    c = ctx.config.candidates
    return {"sources": candidate_sources(ctx.config), "k": c.k, "per_source": c.per_source,
            "quotas": c.quotas_for(candidate_sources(ctx.config)),
            "exclude_seen": ctx.seen().exclude, "max_len": ctx.config.sasrec.max_len, **split_inputs(ctx.config)}


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
                                     exclude_seen=ctx.seen().exclude, device=ctx.config.run.device)(examples)
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
            info["valid_compare"] = compare_single_sources(merged, merged, np.arange(len(merged)), examples.targets)
        ctx.log(f"candidates ({part}): recall@{c.k} merged {info[part][f'recall@{c.k}']:.4f}; "
                + ", ".join(f"{n} {v:.4f}" for n, v in info[part]["source_recall"].items()))
    write_json(ctx.root / "candidates" / "info.json", info)
    return {"valid_recall": info["valid"][f"recall@{c.k}"], "test_recall": info["test"][f"recall@{c.k}"]}


def compare_single_sources(compare: Any, valid: Any, rows: np.ndarray, targets: np.ndarray | None = None
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


def nodes() -> list[Node]:
    return [Node("candidates", _candidates_inputs, lambda ctx: [source_node(n) for n in candidate_sources(ctx.config)],
                 ("candidates",), run_candidates, homes=("candidates",))]
