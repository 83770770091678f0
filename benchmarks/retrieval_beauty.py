"""Generative retrieval on Amazon Beauty (or Sports) 2014: S²GR vs our TIGER, S²GR ablations, and SASRec — a thin
driver over the pipeline (configs/<dataset>.yaml).

    python benchmarks/retrieval_beauty.py [--dataset beauty|sports] [--models s2gr,tiger,...]
        [--max-train-min 60] [--epochs 40] [--data-root ../shared/data] [--threads 2] [--set retrieval.model.dropout=0.3]

Leave-one-out, full ranking (every item reachable through the SID trie, beam 20), history ≤ 50. Each variant
(benchmarks/retrieval_models.py: a registered retriever + model overrides) is its own run directory
``runs/bench-retrieval/<dataset>/<variant><tag>``; the data and Semantic IDs (the preset's CoBa) come from a shared
``…/_base`` run and are reused by content hash, and a variant's training checkpoints every epoch and resumes when
re-run. Reports test R@5/10, N@5/10 with 95 % CIs, training wall time, training samples/s, beam inference users/s
and peak RSS, and paired tests (per-user N@10). Writes benchmarks/results/retrieval_<dataset>.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, read_json, row, save_rows  # noqa: E402
from retrieval_models import variant_overrides  # noqa: E402
from thinkrec.data.batching import pad_histories  # noqa: E402
from thinkrec.eval.metrics import mean_metrics, rank_metrics  # noqa: E402
from thinkrec.eval.stats import bootstrap_ci, paired_test  # noqa: E402
from thinkrec.pipeline.config import load_run_config  # noqa: E402
from thinkrec.pipeline.run import open_run, share_nodes
from thinkrec.pipeline.stages.evaluate import evaluate_scorer  # noqa: E402
from thinkrec.retrieval.beam import constrained_beam_search  # noqa: E402
from thinkrec.retrieval.inference import thought_agreement  # noqa: E402

KS = (5, 10)


def _metrics(ranks: np.ndarray) -> tuple[dict, dict]:
    per_user = rank_metrics(ranks, KS)
    out: dict = {k: round(v, 5) for k, v in mean_metrics(per_user).items()}
    for k in ("recall@10", "ndcg@10"):
        _, lo, hi = bootstrap_ci(per_user[k], 1000)
        out[f"{k}_ci95"] = [round(lo, 5), round(hi, 5)]
    return out, per_user


def _save_per_user(args: argparse.Namespace, name: str, values: np.ndarray) -> None:
    out = Path(args.out) / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"per_user_ndcg10_{name}.npy", values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--models", default="s2gr,tiger,s2gr-noalign,s2gr-noaux")
    p.add_argument("--skip-sasrec", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--max-train-min", type=float, default=60.0)
    p.add_argument("--model-epochs", action="append", default=[], help="per-model epochs, e.g. tiger=17 (same wall budget)")
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--set", action="append", default=[], help="config override, e.g. retrieval.model.dropout=0.3")
    p.add_argument("--out", default="runs/bench-retrieval")
    p.add_argument("--tag", default="", help="suffix of variant names, checkpoints and per-user files (e.g. -60m): "
                   "keeps rows of other budgets; paired tests compare models of the same tag")
    p.add_argument("--rescore", action="store_true",
                   help="also rank each model's beams with its item head (LIGER-style hybrid): the weight is tuned on "
                        "the validation subset (the pipeline's rescore node), the row is <model>+dense<tag>")
    p.add_argument("--pairs", default="s2gr:tiger,s2gr:sasrec,tiger:sasrec,s2gr:s2gr-noalign,s2gr:s2gr-noaux",
                   help="paired tests a:b (per-user test N@10 of earlier or this invocation's models, same tag)")
    args = p.parse_args()
    bench = f"retrieval_{args.dataset}"
    base_sets = [f"run.threads={args.threads}", *([f"data.data_root={args.data_root}"] if args.data_root else []),
                 f"retrieval.beam={args.beam}", f"retrieval.train.patience={args.patience}",
                 f"retrieval.train.max_train_s={args.max_train_min * 60}", *args.set]
    preset = Path("configs") / f"{args.dataset}.yaml"
    bench_root = Path(args.out) / args.dataset
    base = open_run(load_run_config(preset, base_sets), bench_root / "_base")
    base.graph.ensure("sids")
    split = base.get_split()
    rows, per_user_n10 = [], {}

    if not args.skip_sasrec:
        base.graph.ensure("sasrec")
        ranks, _ = evaluate_scorer(base, "sasrec")
        m, pu = _metrics(ranks)
        marker = base.graph.marker("sasrec")
        m.update(train_wall_s=round(marker["wall_s"], 1), epochs=marker["info"]["epochs"], peak_rss_mb=round(peak_rss_mb(), 1))
        per_user_n10["sasrec"] = pu["ndcg@10"]
        _save_per_user(args, "sasrec", pu["ndcg@10"])
        rows.append(row(bench, args.dataset, "sasrec", m, marker["wall_s"], variant="sasrec",
                        config=read_json(base.root / "sasrec" / "config.json")["config"]))
        print("sasrec", m, flush=True)
        save_rows(bench, rows, key="variant")

    for name in [s.strip() for s in args.models.split(",") if s.strip()]:
        model, over = variant_overrides(name)
        epochs = dict(kv.split("=") for kv in args.model_epochs).get(name, args.epochs)
        sets = [*base_sets, f"retrieval.models=[{model}]", *over, f"retrieval.train.epochs={int(epochs)}"]
        for label, weight in [("", "0")] + ([("+dense", "null")] if args.rescore else []):
            cfg = load_run_config(preset, [*sets, f"retrieval.rescore_weight={weight}"])
            ctx = open_run(cfg, bench_root / (name + args.tag))
            share_nodes(base.root, ctx.root, ("data", "sids"))
            ctx.graph.ensure(f"retrieval/{model}/rescore")
            marker = ctx.graph.marker(f"retrieval/{model}")
            ranks, eval_s = evaluate_scorer(ctx, model)
            m, pu = _metrics(ranks)
            variant = f"{name}{label}{args.tag}"
            per_user_n10[variant] = pu["ndcg@10"]
            _save_per_user(args, variant, pu["ndcg@10"])
            info = marker["info"]
            history = read_json(ctx.root / "retrieval" / model / "history.json")
            m.update(train_s=round(info["train_s"], 1), epochs=info["epochs"],
                     best_epoch=max(history, key=lambda h: h["valid_ndcg@10"])["epoch"],
                     samples_per_s=round(info["samples_per_s"], 1), users_per_s=round(len(split.test) / eval_s, 1),
                     peak_rss_mb=round(peak_rss_mb(), 1))
            scorer = ctx.scorer(model)
            if label:
                tuned = read_json(ctx.root / "retrieval" / model / "rescore.json")
                m.update(dense_weight=tuned["weight"], valid_ndcg10_by_weight=tuned.get("valid_ndcg@10_by_weight"))
            if scorer.model.thinking and not label:  # how often a thinking token points at the next code's cluster
                toks = torch.from_numpy(pad_histories(split.test.offsets, split.test.items,
                                                      np.arange(min(2000, len(split.test))), 50))
                beams = constrained_beam_search(scorer.model, toks, scorer.trie, args.beam, return_thoughts=True)
                m["thought_cluster_agreement"] = {f"l{k + 1}": round(v, 4) for k, v in thought_agreement(
                    scorer.model, beams.thoughts[:, :1], beams.codes[:, :1]).items()}
            rows.append(row(bench, args.dataset, model, m, marker["wall_s"], variant=variant,
                            model_config=asdict(cfg.retrieval.model_config(model)), train_config=asdict(cfg.retrieval.train),
                            run_dir=str(ctx.root), history=history))
            print(variant, m, flush=True)
            save_rows(bench, rows, key="variant")

    tests = {}
    for f in (Path(args.out) / args.dataset).glob("per_user_ndcg10_*.npy"):  # earlier invocations' models
        per_user_n10.setdefault(f.stem.removeprefix("per_user_ndcg10_"), np.load(f))
    for pair in [x for x in args.pairs.split(",") if x]:
        a, b = (n + args.tag if n != "sasrec" else n for n in pair.split(":"))
        if a in per_user_n10 and b in per_user_n10:
            tests[f"{a}_vs_{b}"] = paired_test(per_user_n10[a], per_user_n10[b], 1000, seed=0)
            print(a, "vs", b, tests[f"{a}_vs_{b}"])
    if tests:  # attached to the first model of each pair, also to rows saved by an earlier invocation
        path = RESULTS / f"{bench}.json"
        saved = [r for r in (read_json(path) if path.exists() else []) if r["dataset"] == args.dataset]
        by_variant = {r["variant"]: r for r in saved if "variant" in r} | {r["variant"]: r for r in rows}
        touched = []
        for key, t in tests.items():
            first = key.split("_vs_")[0]
            if first in by_variant:
                by_variant[first].setdefault("paired_tests_ndcg@10", {})[key] = t
                touched.append(by_variant[first])
        save_rows(bench, list({id(r): r for r in touched + rows}.values()), key="variant")


if __name__ == "__main__":
    main()
