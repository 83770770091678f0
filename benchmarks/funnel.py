"""The funnel's final list on a standard benchmark: merged candidates from several sources → re-ranking, evaluated
end to end over every test user — a thin driver over the pipeline (``thinkrec run --config configs/<dataset>.yaml``).

    python benchmarks/funnel.py [--dataset beauty] [--variants default,masked,sources-sasrec,...] [--set k=v ...]

``default`` trains the preset into ``runs/<dataset>`` (what ``thinkrec run --config configs/<dataset>.yaml`` trains
and ``thinkrec.load`` serves); every other variant is its own run directory under ``runs/bench-funnel/<dataset>/``
that reuses the default's trained sources (data, SIDs, SASRec, retrievers, co-occurrence) and changes one factor:

- ``masked``: seen items masked at evaluation (and excluded from every source's candidates);
- ``sources-sasrec`` / ``sources-generative`` / ``sources-nogen``: SASRec only, the generative retrievers only,
  everything but the generative retrievers (the default is the union of all sources);
- ``k20`` / ``k100``: merged set size (default 50);
- ``no-source-features``: re-rankers without the sources' ranks and scores as features.

Writes ``benchmarks/results/funnel_<dataset>.json`` (benchmark ``funnel``): ``funnel`` = the final list the preset
serves (chosen on the comparison slice), ``funnel-<name>`` every other final list of the default run (the merge
order ``candidates`` and each re-ranker), single sources by name (full ranking), ``-masked`` rows on the masked
protocol, and one ``funnel-<variant>`` row per ablation (the list that variant would serve). Metrics R@5/10,
N@5/10 with 95 % bootstrap CIs; the funnel rows add paired tests against every single source.
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
from thinkrec.utils.io import read_json  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "masked": ["eval.mask_history=true"],
    "sources-sasrec": ["candidates.sources=[sasrec]"],
    "sources-generative": [],  # filled from the preset's retrieval.models
    "sources-nogen": [],
    "k20": ["candidates.k=20"],
    "k100": ["candidates.k=100"],
    "no-source-features": ["rerank.source_features=false"],
}
KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def _metrics(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(entry["metrics"][k], 5) for k in KEYS if k in entry["metrics"]}
    for k in ("recall@10", "ndcg@10"):
        if k in entry.get("ci95", {}):
            out[f"{k}_ci95"] = [round(v, 5) for v in entry["ci95"][k]]
    return out


def _rows(dataset: str, root: Path, suffix: str, wall: float, singles: bool, prefix: str = "funnel") -> list[dict]:
    test = read_json(root / "eval" / "metrics.json")
    funnel = test["funnel"]
    cand = read_json(root / "candidates" / "info.json")
    record = read_json(root / "funnel.json")
    final = funnel["final"]
    timings = read_json(root / "timings.json") if (root / "timings.json").exists() else {}
    k = cand["k"]
    common = {"candidates_k": k, f"candidates_recall@{k}": round(cand["test"][f"recall@{k}"], 5),
              "source_recall@k": {n: round(v, 5) for n, v in cand["test"]["source_recall"].items()}}
    entry = funnel["models"][final] if final in funnel["models"] and "ci95" in funnel["models"][final] else test[final]
    head = {**_metrics(entry), **common, "final": final, "lost_on_validation": record.get("lost", []),
            "paired_tests_ndcg@10": {n.removeprefix("funnel_vs_"): {x: round(t[x], 5) for x in ("diff", "diff_low",
                                     "diff_high", "p_bootstrap", "p_ttest")} for n, t in funnel["paired_tests"].items()},
            "comparison_slice_ndcg@10": {n: round(v, 5) for n, v in record.get("comparison", {}).items()}}
    rows = [row("funnel", dataset, prefix + suffix, head, wall, stage_s=timings)]
    if singles:
        for name, m in funnel["models"].items():
            if name != final and "ci95" in m:
                rows.append(row("funnel", dataset, f"funnel-{name}{suffix}", {**_metrics(m), **common}, wall))
        for name, entry in test.items():
            if name not in ("funnel", "paired_tests") and "metrics" in entry:
                rows.append(row("funnel", dataset, name + suffix, {
                    **_metrics(entry), f"recall@{k}": common["source_recall@k"].get(name)}, 0.0))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="beauty", help="a preset in configs/ (beauty, sports, yelp)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="config override for every variant (repeatable)")
    p.add_argument("--base-dir", default="runs", help="the default variant trains <base-dir>/<dataset>")
    p.add_argument("--out-dir", default="runs/bench-funnel")
    args = p.parse_args()
    sets = [*([f"data.data_root={args.data_root}"] if args.data_root else []), *args.set]
    preset = Path("configs") / f"{args.dataset}.yaml"
    base_cfg = bench_config(preset, sets, args.threads)
    gen = list(base_cfg.retrieval.models) if "retrieval" in base_cfg.stages else []
    VARIANTS["sources-generative"] = [f"candidates.sources=[{','.join(gen)}]"] if gen else []
    nogen = ["sasrec", "cooc", "popularity"]
    VARIANTS["sources-nogen"] = [f"candidates.sources=[{','.join(nogen)}]"]
    base_root = Path(args.base_dir) / args.dataset
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; known: {', '.join(VARIANTS)}")
        if name == "sources-generative" and not gen:
            print("no generative retriever in the preset: skipping sources-generative")
            continue
        t0 = time.perf_counter()
        if name == "default":
            run_pipeline(base_cfg, run_dir=base_root)
            save_rows("funnel_" + args.dataset, _rows(args.dataset, base_root, "", time.perf_counter() - t0, True))
            continue
        cfg = bench_config(preset, [*sets, *VARIANTS[name]], args.threads)
        root = variant_dir(args.out_dir, args.dataset, name)
        ctx = open_variant(cfg, root)
        # every trained source of the default run (not only this variant's), so no stage retrains a source
        base_ctx = open_variant(base_cfg, base_root)
        shared = [n for n in upstream_closure(base_ctx, "candidates") if n != "candidates"]
        share_nodes(ctx, base_root, shared)
        stages = [s for s in cfg.stages if s not in ("llm", "report")]
        run_pipeline(cfg, stages, run_dir=root)
        wall = time.perf_counter() - t0
        rows = (_rows(args.dataset, root, "-masked", wall, True) if name == "masked"
                else _rows(args.dataset, root, "", wall, False, prefix=f"funnel-{name}"))
        save_rows("funnel_" + args.dataset, rows)
        print(name, {k: v for k, v in rows[0]["metrics"].items() if k in KEYS}, "final:", rows[0]["metrics"]["final"],
              flush=True)


if __name__ == "__main__":
    main()
