"""The funnel's final list on a standard benchmark: merged candidates from several sources → re-ranking, evaluated
end to end over every test user on the field's protocol (seen items excluded) — a thin driver over the pipeline
(``thinkrec run --config configs/<dataset>.yaml``).

    python benchmarks/funnel.py [--dataset beauty] [--seed 0] [--variants default,unmasked,no-cooc,...] [--set k=v ...]

``default`` trains the preset into ``runs/<dataset>`` (seed 0; ``runs/<dataset>-seed<N>`` for ``--seed N``): what
``thinkrec run --config configs/<dataset>.yaml`` trains and ``thinkrec.load`` serves. Every other variant is its own
run directory under ``runs/bench-funnel/<dataset>/seed<N>/`` that reuses the default's trained sources (data, SIDs,
SASRec, retrievers, co-occurrence) and changes one factor:

- ``unmasked``: ``eval.seen=keep`` — seen items kept in every source's candidates and in evaluation (re-rankers
  ``initial, dnn, lightgbm``); rows get the suffix ``-unmasked``;
- ``no-<group>`` (``cooc``, ``sid``, ``brand``, ``trend``, ``sources``): the LightGBM re-ranker without one group of
  candidate features (``sources``: each source's rank / score columns) — compare with the default's
  ``funnel-lightgbm`` row (the same re-ranker with every group);
- ``slots-bsarec-tiger``: merged slots only for BSARec and TIGER (SASRec, co-occurrence, EASE: features and
  fallback, quota 0) — the sources whose removal lowers the merged recall@K on validation;
- ``sources-sasrec`` / ``sources-generative`` / ``sources-nogen``: SASRec only, the generative retrievers only,
  everything but the generative retrievers;
- ``k20`` / ``k100``: merged set size (default 50).

Writes ``benchmarks/results/funnel_<dataset>.json`` (benchmark ``funnel``), every row with ``protocol`` (``masked``:
seen items excluded, the field's; ``unmasked``) and ``seed`` at the top level: ``funnel`` = the final list the preset
serves (chosen on the comparison slice, a validation slice), ``funnel-<name>`` every other final list of the default
run (the merge order ``candidates`` and each re-ranker), single sources by name (full ranking), one
``funnel-<variant>`` row per ablation. Metrics R@5/10, N@5/10 with 95 % bootstrap CIs; the ``funnel`` row adds
paired tests against every single source and names the best one. Rows of an earlier protocol (no ``protocol``
field) are removed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_config, open_variant, row, save_rows, share_nodes, upstream_closure, variant_dir  # noqa: E402
from thinkrec.pipeline.run import run_pipeline  # noqa: E402
from thinkrec.rerank.lists import GROUP_NAMES  # noqa: E402
from thinkrec.utils.io import read_json  # noqa: E402

# only the LightGBM ranker is compared in the ablations; the list evaluator (RL reward, evaluator-score column)
# then trains one epoch, as nothing of the ablation reads it
_ABLATE = ["rerank.models=[initial,lightgbm]", "rerank.train.evaluator_epochs=1"]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "unmasked": ["eval.seen=keep", "rerank.models=[initial,dnn,lightgbm]"],
    **{f"no-{g}": [f"rerank.feature_groups=[{','.join(x for x in GROUP_NAMES if x != g)}]", *_ABLATE]
       for g in GROUP_NAMES},
    "no-sources": ["rerank.source_features=false", *_ABLATE],
    # candidates only from the sources that raise the merged recall@K on validation (BSARec, TIGER); SASRec,
    # co-occurrence and EASE stay as features of those candidates and as fallbacks (quota 0)
    "slots-bsarec-tiger": ["candidates.quotas={sasrec: 0, cooc: 0, ease: 0}", *_ABLATE],
    "sources-sasrec": ["candidates.sources=[sasrec]"],
    "sources-generative": [],  # filled from the preset's retrieval.models
    "sources-nogen": [],
    "k20": ["candidates.k=20"],
    "k100": ["candidates.k=100"],
}
KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def _metrics(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(entry["metrics"][k], 5) for k in KEYS if k in entry["metrics"]}
    for k in ("recall@10", "ndcg@10"):
        if k in entry.get("ci95", {}):
            out[f"{k}_ci95"] = [round(v, 5) for v in entry["ci95"][k]]
    return out


def _rows(dataset: str, root: Path, suffix: str, wall: float, singles: bool, seed: int, prefix: str = "funnel",
          **extra: Any) -> list[dict]:
    test = read_json(root / "eval" / "metrics.json")
    funnel = test["funnel"]
    cand = read_json(root / "candidates" / "info.json")
    record = read_json(root / "funnel.json")
    final = funnel["final"]
    timings = read_json(root / "timings.json") if (root / "timings.json").exists() else {}
    stage_s = {p.stem: round(read_json(p).get("wall_s", 0.0), 1) for p in sorted((root / "stages").glob("*.json"))}
    k = cand["k"]
    tags = {"protocol": "masked" if record["seen"]["exclude"] else "unmasked", "seed": seed, **extra}
    common = {"candidates_k": k, f"candidates_recall@{k}": round(cand["test"][f"recall@{k}"], 5),
              "source_recall@k": {n: round(v, 5) for n, v in cand["test"]["source_recall"].items()},
              "valid_source_recall@k": {n: round(v, 5) for n, v in cand["valid"]["source_recall"].items()},
              f"valid_candidates_recall@{k}": round(cand["valid"][f"recall@{k}"], 5)}
    entry = funnel["models"][final] if final in funnel["models"] and "ci95" in funnel["models"][final] else test[final]
    head = {**_metrics(entry), **common, "final": final, "lost_on_validation": record.get("lost", []),
            "best_single": funnel.get("best_single"),
            "paired_tests_ndcg@10": {n.removeprefix("funnel_vs_"): {x: round(t[x], 5) for x in ("diff", "diff_low",
                                     "diff_high", "p_bootstrap", "p_ttest")} for n, t in funnel["paired_tests"].items()},
            "comparison_slice_ndcg@10": {n: round(v, 5) for n, v in record.get("comparison", {}).items()},
            "seen": record["seen"]}
    rows = [row("funnel", dataset, prefix + suffix, head, wall, stage_s=timings, node_s=stage_s, **tags)]
    if singles:
        for name, m in funnel["models"].items():  # the served one too, under its own name (funnel-<reranker>)
            if "ci95" in m:
                rows.append(row("funnel", dataset, f"funnel-{name}{suffix}", {**_metrics(m), **common}, wall, **tags))
        for name, entry in test.items():
            if name not in ("funnel", "paired_tests") and "metrics" in entry:
                rows.append(row("funnel", dataset, name + suffix, {
                    **_metrics(entry), f"recall@{k}": common["source_recall@k"].get(name)}, 0.0, **tags))
    return rows


def _importance(root: Path) -> dict[str, float]:
    path = root / "rerank" / "lightgbm" / "importance.json"
    return {k: round(v, 1) for k, v in read_json(path).items()} if path.exists() else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="beauty", help="a preset in configs/ (beauty, sports, yelp)")
    p.add_argument("--seed", type=int, default=0, help="run.seed (every stage derives its own)")
    p.add_argument("--variants", default="default")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="config override for every variant (repeatable)")
    p.add_argument("--base-dir", default="runs", help="the default variant trains <base-dir>/<dataset>[-seed<N>]")
    p.add_argument("--out-dir", default="runs/bench-funnel")
    args = p.parse_args()
    sets = [*([f"data.data_root={args.data_root}"] if args.data_root else []), f"run.seed={args.seed}", *args.set]
    preset = Path("configs") / f"{args.dataset}.yaml"
    base_cfg = bench_config(preset, sets, args.threads)
    gen = list(base_cfg.retrieval.models) if "retrieval" in base_cfg.stages else []
    VARIANTS["sources-generative"] = [f"candidates.sources=[{','.join(gen)}]"] if gen else []
    VARIANTS["sources-nogen"] = ["candidates.sources=[sasrec,cooc,popularity]"]
    base_root = Path(args.base_dir) / (args.dataset if args.seed == 0 else f"{args.dataset}-seed{args.seed}")
    bench = "funnel_" + args.dataset
    key = ("model", "seed")
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; known: {', '.join(VARIANTS)}")
        if name == "sources-generative" and not gen:
            print("no generative retriever in the preset: skipping sources-generative")
            continue
        t0 = time.perf_counter()
        if name == "default":
            run_pipeline(base_cfg, run_dir=base_root)
            rows = _rows(args.dataset, base_root, "", time.perf_counter() - t0, True, args.seed,
                         lightgbm_gain=_importance(base_root))
            save_rows(bench, rows, key=key, stale=lambda r: "protocol" not in r)
            print(name, {k: v for k, v in rows[0]["metrics"].items() if k in KEYS}, "final:", rows[0]["metrics"]["final"],
                  flush=True)
            continue
        cfg = bench_config(preset, [*sets, *VARIANTS[name]], args.threads)
        root = variant_dir(Path(args.out_dir) / args.dataset, f"seed{args.seed}", name)
        ctx = open_variant(cfg, root)
        # every trained source of the default run (not only this variant's), so no stage retrains a source
        base_ctx = open_variant(base_cfg, base_root)
        shared = [n for n in upstream_closure(base_ctx, "candidates") if n != "candidates"]
        share_nodes(ctx, base_root, shared + ["candidates"])
        if (base_root / "eval" / "ranks").exists():  # the sources' test ranks, reused where their key still holds
            import shutil

            shutil.copytree(base_root / "eval" / "ranks", root / "eval" / "ranks", dirs_exist_ok=True)
        stages = [s for s in cfg.stages if s not in ("llm", "report")]
        run_pipeline(cfg, stages, run_dir=root)
        wall = time.perf_counter() - t0
        if name == "unmasked":
            rows = _rows(args.dataset, root, "-unmasked", wall, True, args.seed)
        elif name.startswith("no-"):
            rows = _rows(args.dataset, root, "", wall, False, args.seed, prefix=f"funnel-{name}", reranker="lightgbm",
                         lightgbm_gain=_importance(root))
            lgb = read_json(root / "eval" / "metrics.json")["funnel"]["models"].get("lightgbm")
            if lgb:  # the ablated LightGBM list itself (the served one may be another configuration)
                rows[0]["metrics"].update({f"lightgbm_{k}": round(v, 5) for k, v in lgb["metrics"].items() if k in KEYS})
        else:
            rows = _rows(args.dataset, root, "", wall, False, args.seed, prefix=f"funnel-{name}")
        save_rows(bench, rows, key=key)
        print(name, {k: v for k, v in rows[0]["metrics"].items() if k in KEYS}, "final:", rows[0]["metrics"]["final"],
              flush=True)


if __name__ == "__main__":
    main()
