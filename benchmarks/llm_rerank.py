"""GR2 LLM re-ranker on Beauty funnel lists (the top-10 of the funnel's final list): the pre-rank order, the
programmatic teacher's own ranking (the ceiling), alignment only, SFT (target and reject sampling) and SFT + DAPO,
with Gemma 3 270M (the PyPI GGUF package) on CPU.

    python benchmarks/llm_rerank.py --lists-run runs/beauty [--preset configs/llm_beauty.yaml]
        [--set llm.sft.steps=40 ...] [--out runs/bench-llm/beauty]

``--lists-run`` is a finished funnel run (``thinkrec run --config configs/beauty.yaml``, or a
``benchmarks/rerank.py --datasets beauty-funnel`` variant); the run directory ``--out`` starts from its config and
reuses everything the llm node reads (data, SIDs, re-ranking lists, the re-rankers the pre-rank order comes from;
``common.share_nodes``); the pipeline's ``llm`` node trains and evaluates there (``llm/metrics.json``, traces,
phase records, adapter; a rerun resumes, and a finished one only rewrites the rows). ``--preset`` is a run config
whose ``llm:`` section (``LLMStageConfig``) and ``run.device`` are applied over the lists run's config. Evaluation
generates one greedy constrained answer per test list that contains the true item (``n_eval``; alignment the first
``n_eval_alignment``; other lists score 0 whatever the order) and reports R@1/R@5/N@5 on those lists and scaled to
all test lists, the share of lists whose order changed and Kendall τ to the input; paired tests on per-list N@5
against the pre-rank, reject vs target and RL vs its SFT start; learning curves (validation N@5 every
``curve_every`` steps) in benchmarks/results/llm_curves.png. Writes benchmarks/results/llm_rerank.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_config,
    node_info,
    open_variant,
    peak_rss_mb,
    row,
    save_rows,
    share_nodes,
    upstream_closure,
)
from thinkrec.eval.metrics import rank_metrics, ranks_from_positions  # noqa: E402
from thinkrec.eval.stats import paired_test  # noqa: E402
from thinkrec.llm.stage import answer_metrics  # noqa: E402
from thinkrec.pipeline.run import run_pipeline  # noqa: E402
from thinkrec.utils.config import read_config_data  # noqa: E402
from thinkrec.utils.io import read_json  # noqa: E402

NAMES = {"pre-rank": "gr2-prerank", "teacher": "gr2-teacher", "alignment": "gr2-align",
         "sft-target": "gr2-sft-target", "sft-reject": "gr2-sft-reject", "rl": "gr2-rl"}


def llm_preset(path: str | None) -> list[str]:
    """An LLM preset (a run config whose ``llm:`` section is stage 4's) as overrides of the lists run's config: its
    ``llm`` section and its ``run.device``; the funnel stages stay those of ``--lists-run``."""
    if not path:
        return []
    data = read_config_data(path)
    if not isinstance(data.get("llm"), dict):
        raise SystemExit(f"{path}: no llm: section (an LLM preset is a run config with one)")
    device = (data.get("run") or {}).get("device")
    return [f"llm={yaml.safe_dump(data['llm'], default_flow_style=True, width=1 << 20).strip()}",
            *([f"run.device={device}"] if device else [])]


def ndcg5(positions: list[int]) -> np.ndarray:
    """Per-list N@5 from the true item's 1-based positions in the answers (0 = not in the list)."""
    return rank_metrics(ranks_from_positions(positions), ks=(5,))["ndcg@5"]


def learning_curves(summary: dict) -> dict[str, list[dict]]:
    """Per training phase, the validation points its trainer logged (``llm.curve_every``), after the point of the
    model it started from at step 0 (SFT: the aligned model; DAPO: its SFT start). DAPO's steps count on from the
    SFT steps before them (``step`` is cumulative; ``phase_step`` its own)."""
    logs, metrics = summary["logs"], summary["metrics"]
    sft_steps = int(summary["config"]["sft"]["steps"])
    rl_from = f"sft-{summary.get('rl_from', summary['config']['rl_from'])}"
    phases = {**{f"sft-{m}": (log, "alignment", 0) for m, log in logs.get("sft", {}).items()},
              "rl": (logs.get("rl", []), rl_from, sft_steps)}
    keys = ("ndcg@5", "recall@1", "changed_share", "kendall_tau")
    out = {}
    for name, (log, start, offset) in phases.items():
        pts = [{"step": offset + r["step"], "phase_step": r["step"],
                **{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("curve/")}}
               for r in log if "curve/ndcg@5" in r]
        if not pts:
            continue
        first = metrics.get(start, {}).get("valid")
        if first is not None:
            pts.insert(0, {"step": offset, "phase_step": 0, **{k: first[k] for k in keys if k in first}})
        out[name] = pts
    return out


def plot_curves(curves: dict[str, list[dict]], pre_rank: float | None) -> Path:
    """Validation N@5 against training steps per phase (DAPO steps after the SFT start it continues from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ax.plot([p["step"] for p in pts], [p["ndcg@5"] for p in pts], marker="o", label=name)
    if pre_rank is not None:
        ax.axhline(pre_rank, color="grey", linestyle="--", label="pre-rank order")
    ax.set_xlabel("optimizer steps (SFT; DAPO continues from its SFT start)")
    ax.set_ylabel("validation N@5 (lists with the true item)")
    ax.legend()
    out = Path(__file__).resolve().parent / "results" / "llm_curves.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def partial(ctx) -> dict:  # noqa: ANN001 - a pipeline Context
    """The summary of a run cut short (``--partial``): finished phases from their records, pre-rank and teacher rows
    recomputed on the same lists (``wall_s`` of the rows is then 0: the stage has not finished)."""
    from thinkrec.llm.stage import partial_summary
    from thinkrec.pipeline.stages.llm import llm_inputs

    catalogue, _, train, valid, test, _ = llm_inputs(ctx)
    return partial_summary(catalogue, train, test, valid, ctx.config.llm, ctx.root / "checkpoints" / "llm" / "stage")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="configs/llm_beauty.yaml", help="LLM preset (a run config; its llm: section and run.device)")
    p.add_argument("--set", action="append", default=[], help="RunConfig override, e.g. llm.sft.steps=40")
    p.add_argument("--lists-run", default="runs/bench-rerank/beauty-funnel/initial",
                   help="a funnel run directory (thinkrec run --config configs/beauty.yaml, or benchmarks/rerank.py --datasets beauty-funnel): its lists, re-rankers, SIDs and data")
    p.add_argument("--out", default="runs/bench-llm/beauty")
    p.add_argument("--threads", type=int, default=2, help="run.threads")
    p.add_argument("--partial", action="store_true",
                   help="no training: rows from the phases a cut-short run has finished so far (their records)")
    args = p.parse_args()
    src = Path(args.lists_run)
    if not (src / "config.yaml").exists() or not (src / "rerank" / "lists").exists():
        raise SystemExit(f"{src}: no re-ranking lists (run benchmarks/rerank.py --datasets beauty-funnel first)")
    cfg = bench_config(src / "config.yaml", [*llm_preset(args.preset), *args.set], args.threads)
    ctx = open_variant(cfg, args.out)
    # everything the llm node reads: the lists, SIDs and data, and the re-rankers its pre-rank order comes from
    share_nodes(ctx, src, upstream_closure(ctx, *ctx.graph.nodes["llm"].upstream(ctx)))
    if args.partial:
        summary = partial(ctx)
        wall = 0.0
    else:
        run_pipeline(cfg, ["llm"], run_dir=args.out)
        ctx = open_variant(cfg, args.out)
        summary = read_json(ctx.root / "llm" / "metrics.json")
        wall = summary.get("wall_s", node_info(ctx, "llm").get("wall_s", 0.0))
    metrics, scaled = summary["metrics"], summary["metrics_all_lists"]
    base = ndcg5(metrics["pre-rank"]["ranks"])
    rows = []
    for phase, m in metrics.items():
        per = ndcg5(m["ranks"])
        assert abs(answer_metrics(m["ranks"])["ndcg@5"] - m["ndcg@5"]) < 1e-9 and abs(per.mean() - m["ndcg@5"]) < 1e-9
        out = {k: round(m[k], 5) for k in ("recall@1", "recall@5", "ndcg@5", "changed_share", "kendall_tau")
               if k in m}
        out["n_lists"] = m["n"]
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        extra = {"metrics_all_lists": {k: round(v, 5) for k, v in scaled[phase].items()}, "phase": phase, "variant": phase,
                 "n_eval_lists": m["n"], "malformed": m["malformed"], "coverage": summary["coverage"],
                 "llm": ctx.config.llm.model, "config": summary["config"], "timings": summary["timings"],
                 "run_dir": str(ctx.root)}
        if phase != "pre-rank":
            extra["vs_prerank_ndcg@5"] = paired_test(per, base[:len(per)], 1000, seed=0)  # alignment: first n lists
            extra["eval_wall_s"] = round(m.get("wall_s", 0.0), 1)
            extra["examples"] = m.get("examples", [])[:1]
        if "valid" in m:
            extra["valid"] = {k: v for k, v in m["valid"].items() if k != "ranks"}
        if phase == "sft-reject" and "sft-target" in metrics:  # equal SFT steps, the traces differ
            extra["vs_sft_target_ndcg@5"] = paired_test(per, ndcg5(metrics["sft-target"]["ranks"]), 1000, seed=0)
        if phase in ("sft-target", "sft-reject"):
            extra["traces"] = summary["traces"][phase.split("-")[1]]
        if phase == "rl" and summary.get("rl_from"):
            extra["vs_sft_ndcg@5"] = paired_test(per, ndcg5(metrics[f"sft-{summary.get('rl_from', ctx.config.llm.rl_from)}"]["ranks"]), 1000, seed=0)
            extra["rl_from"] = summary.get("rl_from", ctx.config.llm.rl_from)
            extra["rl_log"] = [r for r in summary["logs"]["rl"] if "reward" in r]
        rows.append(row("llm_rerank", "beauty-funnel", NAMES[phase], out, wall, deploy=summary.get("deploy"),
                        deploy_why=summary.get("deploy_why"), partial=bool(summary.get("partial")), **extra))
    curves = learning_curves(summary)
    if curves:
        for r in rows:
            if r["variant"] in curves:
                r["curve"] = curves[r["variant"]]
        print("learning curves:", plot_curves(curves, metrics["pre-rank"].get("valid", {}).get("ndcg@5")), flush=True)
    save_rows("llm_rerank", rows, key="dataset")  # the run replaces every beauty-funnel row (no stale phases)
    for r in rows:
        print(r["variant"], r["metrics"], r.get("vs_prerank_ndcg@5", ""), flush=True)


if __name__ == "__main__":
    main()
