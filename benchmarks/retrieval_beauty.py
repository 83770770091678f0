"""Generative retrieval on Amazon Beauty (or Sports) 2014: S²GR vs our TIGER, S²GR ablations, and SASRec.

    python benchmarks/retrieval_beauty.py [--dataset beauty|sports] [--models s2gr,tiger,...]
        [--max-train-min 60] [--epochs 40] [--data-root ../shared/data] [--threads 2]

Leave-one-out, full ranking (every item reachable through the SID trie, beam 20), history ≤ 50. Semantic IDs:
CoBa 3 × 256 (+ dedup digit) from the run directory ``runs/<dataset>-coba/sids`` if present, else fitted here
(MiniLM embeddings are cached). Each generative model trains under the same budget (epochs and minutes of
training), checkpoints every epoch under ``runs/bench-retrieval-<dataset>/<model>/`` and resumes there when
re-run. Reports test R@5/10, N@5/10 with 95 % CIs, training wall time, training samples/s, beam-20 inference
users/s and peak RSS, and paired tests (S²GR vs TIGER and vs SASRec, per-user N@10). Writes
benchmarks/results/retrieval_<dataset>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, read_json, row, save_rows  # noqa: E402
from retrieval_models import MODELS  # noqa: E402
from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec  # noqa: E402
from thinkrec.data import load_dataset  # noqa: E402
from thinkrec.data.batching import pad_histories  # noqa: E402
from thinkrec.data.splits import leave_one_out  # noqa: E402
from thinkrec.eval.metrics import mean_metrics, rank_metrics  # noqa: E402
from thinkrec.eval.protocol import compute_ranks  # noqa: E402
from thinkrec.eval.stats import bootstrap_ci, paired_test  # noqa: E402
from thinkrec.retrieval import GenerativeScorer, RetrieverConfig, RetrieverTrainConfig, train_retriever  # noqa: E402
from thinkrec.retrieval.beam import constrained_beam_search  # noqa: E402
from thinkrec.retrieval.clusters import code_clusters  # noqa: E402
from thinkrec.retrieval.inference import thought_agreement, tune_dense_weight  # noqa: E402
from thinkrec.tokenize.stage import TokenizeConfig, load_tokenize, run_tokenize  # noqa: E402

KS = (5, 10)


def _metrics(ranks: np.ndarray) -> tuple[dict, dict]:
    per_user = rank_metrics(ranks, KS)
    out: dict = {k: round(v, 5) for k, v in mean_metrics(per_user).items()}
    for k in ("recall@10", "ndcg@10"):
        _, lo, hi = bootstrap_ci(per_user[k], 1000)
        out[f"{k}_ci95"] = [round(lo, 5), round(hi, 5)]
    return out, per_user


def _sids(dataset_name: str, ds, split):
    path = Path("runs") / f"{dataset_name}-coba" / "sids"
    if (path / "sidmap").exists():
        return load_tokenize(path)
    return run_tokenize(ds, split, TokenizeConfig(method="coba"), out_dir=path)


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
    p.add_argument("--set", action="append", default=[], help="RetrieverConfig override key=value (all models)")
    p.add_argument("--out", default="runs/bench-retrieval")
    p.add_argument("--tag", default="", help="suffix of variant names, checkpoints and per-user files (e.g. -60m): "
                   "keeps rows of other budgets; paired tests compare models of the same tag")
    p.add_argument("--rescore", action="store_true",
                   help="also rank each model's beams with its item head (LIGER-style hybrid): the weight is tuned on "
                        "the validation subset, the row is <model>+dense<tag>")
    p.add_argument("--pairs", default="s2gr:tiger,s2gr:sasrec,tiger:sasrec,s2gr:s2gr-noalign,s2gr:s2gr-noaux",
                   help="paired tests a:b (per-user test N@10 of earlier or this invocation's models, same tag)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench = f"retrieval_{args.dataset}"
    ds = load_dataset(args.dataset, args.data_root)
    split = leave_one_out(ds)
    art = _sids(args.dataset, ds, split)
    sm = art.sidmap
    rows, per_user_n10 = [], {}
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = type(getattr(RetrieverConfig(), k))(v) if not isinstance(getattr(RetrieverConfig(), k), bool) else v.lower() in ("1", "true", "yes")

    if not args.skip_sasrec:
        t = time.perf_counter()
        cfg = SASRecConfig(epochs=30, patience=3, max_len=50)
        model, history = train_sasrec(split, cfg, log=print)
        wall = time.perf_counter() - t
        ranks = compute_ranks(model.score, split.test, 50, 2048)
        m, pu = _metrics(ranks)
        m.update(train_wall_s=round(wall, 1), epochs=len(history), peak_rss_mb=round(peak_rss_mb(), 1))
        per_user_n10["sasrec"] = pu["ndcg@10"]
        _save_per_user(args, "sasrec", pu["ndcg@10"])
        rows.append(row(bench, args.dataset, "sasrec", m, wall, variant="sasrec", config=asdict(cfg)))
        print("sasrec", m, flush=True)
        save_rows(bench, rows, key="variant")

    for name in [s.strip() for s in args.models.split(",") if s.strip()]:
        label, cfg_over = MODELS[name]
        mcfg = RetrieverConfig(**{**cfg_over, **overrides})
        epochs = dict(kv.split("=") for kv in args.model_epochs).get(name, args.epochs)
        tcfg = RetrieverTrainConfig(epochs=int(epochs), patience=args.patience, max_train_s=args.max_train_min * 60)
        clusters = code_clusters(art.quantizer.codebooks(), sm.radix, mcfg.n_clusters) if mcfg.thinking else None
        t = time.perf_counter()
        model, history = train_retriever(split, sm, mcfg, tcfg, code_clusters=clusters,
                                         checkpoint_dir=Path(args.out) / args.dataset / (name + args.tag), log=print,
                                         codebooks=art.quantizer.codebooks() if mcfg.codebook_init else None)
        wall = time.perf_counter() - t
        scorer = GenerativeScorer(model, sm, args.beam)
        t_eval = time.perf_counter()
        ranks = compute_ranks(scorer.score, split.test, mcfg.max_len, 256)
        eval_s = time.perf_counter() - t_eval
        m, pu = _metrics(ranks)
        per_user_n10[name + args.tag] = pu["ndcg@10"]
        _save_per_user(args, name + args.tag, pu["ndcg@10"])
        train_s = sum(h["train_s"] for h in history)
        m.update(
            train_s=round(train_s, 1),
            epochs=len(history),
            best_epoch=max(history, key=lambda h: h["valid_ndcg@10"])["epoch"],
            samples_per_s=round(float(np.median([h["samples_per_s"] for h in history])), 1),
            users_per_s=round(len(split.test) / eval_s, 1),
            peak_rss_mb=round(peak_rss_mb(), 1),
        )
        if mcfg.thinking:  # how often a thinking token points at the cluster of the code generated next
            toks = torch.from_numpy(pad_histories(split.test.offsets, split.test.items, np.arange(min(2000, len(split.test))), 50))
            beams = constrained_beam_search(model, toks, scorer.trie, args.beam, return_thoughts=True)
            m["thought_cluster_agreement"] = {f"l{k + 1}": round(v, 4) for k, v in thought_agreement(model, beams.thoughts[:, :1], beams.codes[:, :1]).items()}
        rows.append(row(bench, args.dataset, label, m, wall, variant=name + args.tag, model_config=asdict(mcfg),
                        train_config=asdict(tcfg), history=history))
        print(name, {k: v for k, v in m.items()}, flush=True)
        save_rows(bench, rows, key="variant")
        if args.rescore:
            valid = split.valid
            if tcfg.valid_users and len(valid) > tcfg.valid_users:  # the early-stopping subset
                valid = valid.subset(np.sort(np.random.default_rng(tcfg.seed).choice(len(valid), tcfg.valid_users, replace=False)))
            t_tune = time.perf_counter()
            weight, by_weight = tune_dense_weight(model, sm, valid, args.beam, max_len=mcfg.max_len)
            tune_s = time.perf_counter() - t_tune
            t_eval = time.perf_counter()
            ranks = compute_ranks(GenerativeScorer(model, sm, args.beam, weight).score, split.test, mcfg.max_len, 256)
            eval_s = time.perf_counter() - t_eval
            md, pud = _metrics(ranks)
            md.update({k: m[k] for k in ("train_s", "epochs", "best_epoch", "samples_per_s")},
                      users_per_s=round(len(split.test) / eval_s, 1), peak_rss_mb=round(peak_rss_mb(), 1),
                      dense_weight=weight, valid_ndcg10_by_weight={str(w): round(v, 5) for w, v in by_weight.items()},
                      tune_s=round(tune_s, 1))
            dense_name = f"{name}+dense{args.tag}"
            per_user_n10[dense_name] = pud["ndcg@10"]
            _save_per_user(args, dense_name, pud["ndcg@10"])
            rows.append(row(bench, args.dataset, label, md, wall, variant=dense_name, model_config=asdict(mcfg),
                            train_config=asdict(tcfg)))
            print(dense_name, md, flush=True)
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
