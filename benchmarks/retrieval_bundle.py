"""Generative retrieval on another machine (a GPU box): export a self-contained bundle, train and test there.

    python benchmarks/retrieval_bundle.py export --dataset beauty --out .devdata/beauty
    python benchmarks/retrieval_bundle.py train --bundle .devdata/beauty --model tiger --paper --device cuda \
        --epochs 60 --max-train-min 7 --seed 0 --out OUT_DIR

``export`` writes the leave-one-out split (CSR arrays), the CoBa SID map and each level's code clusters (faiss
k-means, computed here) — a few MB, no raw data, no faiss needed where it trains. ``train`` runs one model of
``benchmarks/retrieval_beauty.py``'s ``MODELS`` (``--paper``: TIGER's T5 size, ``RetrieverConfig.paper()``) with
the same protocol — early stopping on N@10 of the 3,000-user validation subset, test R@5/10 and N@5/10 over all
items, beam ``--beam`` — plus the dense re-scoring of the beams (weight tuned on the validation subset), and writes
``<out>/<model><tag>.json`` and per-user test N@10 (``.npy``) for paired tests. ``collect`` gathers such folders
(fetched back from the GPU box) into ``benchmarks/results/<name>.json`` rows with paired tests of per-user test N@10
(``--pairs a:b``, where names joined by ``&`` average their runs per user, e.g. two seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from thinkrec.data.splits import EvalExamples, SequenceSplit  # noqa: E402
from thinkrec.eval.metrics import mean_metrics, rank_metrics  # noqa: E402
from thinkrec.eval.protocol import compute_ranks  # noqa: E402
from thinkrec.retrieval import GenerativeScorer, RetrieverConfig, RetrieverTrainConfig, train_retriever  # noqa: E402
from thinkrec.retrieval.inference import tune_dense_weight  # noqa: E402
from thinkrec.tokenize.sids import SIDMap  # noqa: E402

EXAMPLE_FIELDS = ("users", "offsets", "items", "targets")


def export(args: argparse.Namespace) -> None:
    from thinkrec.pipeline.config import load_run_config
    from thinkrec.pipeline.run import open_run
    from thinkrec.retrieval.clusters import code_clusters
    from thinkrec.tokenize.stage import load_tokenize

    # the data and Semantic IDs of retrieval_beauty.py's shared run (the preset's split and SIDs)
    sets = [f"data.data_root={args.data_root}"] if args.data_root else []
    ctx = open_run(load_run_config(Path("configs") / f"{args.dataset}.yaml", sets), Path(args.runs) / args.dataset / "_base")
    ctx.graph.ensure("sids")
    split, art = ctx.get_split(), load_tokenize(ctx.root / "sids")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"train_offsets": split.train_offsets, "train_items": split.train_items}
    for part in ("valid", "test"):
        ex = getattr(split, part)
        arrays.update({f"{part}_{f}": getattr(ex, f) for f in EXAMPLE_FIELDS})
    np.savez_compressed(out / "split.npz", **arrays)
    art.sidmap.save(out / "sidmap")
    for k in sorted({int(x) for x in args.clusters.split(",")}):
        np.save(out / f"clusters_k{k}.npy", code_clusters(art.quantizer.codebooks(), art.sidmap.radix, k).numpy())
    meta = {"dataset": args.dataset, "n_users": split.n_users, "n_items": split.n_items}
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"bundle {out}: {meta}")


def _load_bundle(path: Path) -> tuple[SequenceSplit, SIDMap, dict]:
    meta = json.loads((path / "meta.json").read_text())
    z = np.load(path / "split.npz")
    ex = {p: EvalExamples(*(z[f"{p}_{f}"] for f in EXAMPLE_FIELDS)) for p in ("valid", "test")}
    split = SequenceSplit(meta["n_users"], meta["n_items"], z["train_offsets"], z["train_items"], ex["valid"], ex["test"])
    return split, SIDMap.load(path / "sidmap"), meta


def train(args: argparse.Namespace) -> None:
    from retrieval_models import MODELS

    torch.set_num_threads(args.threads)
    split, sm, meta = _load_bundle(Path(args.bundle))
    from thinkrec.retrieval.stage import RETRIEVERS
    from thinkrec.utils.config import from_dict, set_dotted, to_dict

    label, over = MODELS[args.model][0], dict(MODELS[args.model][1])
    base = to_dict(RetrieverConfig.paper(**over) if args.paper else RetrieverConfig(**over))
    for kv in args.set:  # YAML values, errors naming the field (the config module's parser)
        set_dotted(base, kv)
    mcfg = RETRIEVERS.get(label)(from_dict(RetrieverConfig, base, where="--set"))
    tcfg = RetrieverTrainConfig(epochs=args.epochs, patience=args.patience, max_train_s=args.max_train_min * 60,
                                seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    clusters = None
    if mcfg.thinking:
        clusters = torch.from_numpy(np.load(Path(args.bundle) / f"clusters_k{mcfg.n_clusters}.npy"))
    name = f"{args.model}{args.tag}"
    t = time.perf_counter()
    model, history = train_retriever(split, sm, mcfg, tcfg, device=args.device, code_clusters=clusters,
                                     log=lambda m: print(f"{name}: {m}", flush=True))
    wall = time.perf_counter() - t
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": f"retrieval_{meta['dataset']}", "dataset": meta["dataset"], "model": label, "variant": name,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "command": "python " + " ".join(sys.argv), "model_config": asdict(mcfg), "train_config": asdict(tcfg),
              "wall_s": round(wall, 1), "history": history,
              "n_params": sum(p.numel() for p in model.parameters())}
    valid = split.valid.subset(np.sort(np.random.default_rng(tcfg.seed).choice(len(split.valid), 3000, replace=False)))
    weight, by_weight = tune_dense_weight(model, sm, valid, args.beam, max_len=mcfg.max_len)
    for tag, w in (("", 0.0), ("+dense", weight)):
        t_eval = time.perf_counter()
        ranks = compute_ranks(GenerativeScorer(model, sm, args.beam, w).score, split.test, mcfg.max_len, 256,
                              device=args.device)
        eval_s = time.perf_counter() - t_eval
        per_user = rank_metrics(ranks, (5, 10))
        m = {k: round(v, 5) for k, v in mean_metrics(per_user).items()}
        m.update(users_per_s=round(len(split.test) / eval_s, 1), dense_weight=w,
                 train_s=round(sum(h["train_s"] for h in history), 1), epochs=len(history),
                 best_epoch=max(history, key=lambda h: h["valid_ndcg@10"])["epoch"])
        result["metrics" + tag] = m
        np.save(out / f"per_user_ndcg10_{name}{tag}.npy", per_user["ndcg@10"].astype(np.float32))
        print(f"{name}{tag}: {m}", flush=True)
    result["valid_ndcg10_by_weight"] = {str(k): round(v, 5) for k, v in by_weight.items()}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))


def collect(args: argparse.Namespace) -> None:
    from common import save_rows
    from thinkrec.eval.stats import paired_test

    runs, per_user = [], {}
    for folder in args.dirs:
        for f in sorted(Path(folder).glob("*.json")):
            r = json.loads(f.read_text())
            if "variant" not in r or "metrics" not in r:
                continue
            runs.append(r)
            for tag in ("", "+dense"):
                per_user[r["variant"] + tag] = np.load(Path(folder) / f"per_user_ndcg10_{r['variant']}{tag}.npy").astype(np.float64)
    rows = []
    for r in runs:
        for tag in ("", "+dense"):
            rows.append({"benchmark": args.name, "dataset": r["dataset"], "model": r["model"], "variant": r["variant"] + tag,
                         "metrics": r["metrics" + tag], "wall_s": r["wall_s"], "command": r["command"],
                         "machine": r["device"], "n_params": r["n_params"], "model_config": r["model_config"],
                         "train_config": r["train_config"], "history": r["history"] if not tag else None})

    def values(name: str) -> np.ndarray:  # "a&b": the runs' per-user mean (e.g. two seeds of one model)
        return np.mean([per_user[p] for p in name.split("&")], axis=0)

    tests = {}
    for pair in [x for x in args.pairs.split(",") if x]:
        a, b = pair.split(":")
        tests[pair] = paired_test(values(a), values(b), 1000, seed=0)
        print(f"{a} vs {b}: {tests[pair]}")
    if rows:
        rows[0]["paired_tests_ndcg@10"] = tests
    print(save_rows(args.name, rows, key="variant"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--dataset", default="beauty")
    e.add_argument("--data-root", default=None)
    e.add_argument("--clusters", default="16", help="K_c values to precompute (comma-separated)")
    e.add_argument("--out", required=True)
    e.add_argument("--runs", default="runs/bench-retrieval", help="where retrieval_beauty.py keeps its runs (<runs>/<dataset>/_base)")
    t = sub.add_parser("train")
    t.add_argument("--bundle", required=True)
    t.add_argument("--model", default="tiger")
    t.add_argument("--paper", action="store_true", help="TIGER's T5 size (4 + 4 layers, 6 heads × 64, FFN 1024, code tokens)")
    t.add_argument("--set", action="append", default=[], help="RetrieverConfig override key=value")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--patience", type=int, default=6)
    t.add_argument("--max-train-min", type=float, default=60.0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--beam", type=int, default=20)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tag", default="")
    t.add_argument("--out", required=True)
    c = sub.add_parser("collect")
    c.add_argument("dirs", nargs="+", help="folders written by train (fetched back)")
    c.add_argument("--name", default="retrieval_beauty_gpu", help="benchmarks/results/<name>.json")
    c.add_argument("--pairs", default="", help="paired tests a:b of per-user test N@10; a&b averages runs per user")
    args = p.parse_args()
    {"export": export, "train": train, "collect": collect}[args.cmd](args)


if __name__ == "__main__":
    main()
