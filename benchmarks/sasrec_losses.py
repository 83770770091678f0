"""SASRec's losses on one split, each with and without masking the history's items at evaluation — a thin driver
over the pipeline's ``sasrec`` node (one run directory per variant, shared ``data``).

    python benchmarks/sasrec_losses.py [--dataset beauty] [--variants ss-uniform,ss-mixed,...] [--set k=v ...]

Every variant starts from the eSASRec recipe (Tikhonovich et al. 2025, on Beauty: 1 block, 1 head, d 64,
dropout 0.2, lr 1e-3 constant, up to 200 epochs with patience 50) and changes the loss only; ``ce-2l`` is the
shipped 2-block CE preset. Writes ``benchmarks/results/sasrec_losses.json``: model = the variant (seen items not
masked) and ``<variant>-masked``; test R@5/10/20, N@5/10/20 with 95 % bootstrap CIs, epochs, best epoch, seconds per
epoch and training wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_config, metrics_with_ci, open_variant, row, save_rows, share_nodes, variant_dir  # noqa: E402
from thinkrec.eval.protocol import compute_ranks  # noqa: E402
from thinkrec.utils.io import read_json  # noqa: E402

RECIPE = ["sasrec.n_layers=1", "sasrec.n_heads=1", "sasrec.dropout=0.2", "sasrec.lr=0.001", "sasrec.schedule=constant",
          "sasrec.epochs=200", "sasrec.patience=50"]
VARIANTS: dict[str, list[str]] = {
    "ss-uniform": [*RECIPE, "sasrec.loss=sampled", "sasrec.negatives=256", "sasrec.negative_sampling=uniform"],
    "ss-inbatch": [*RECIPE, "sasrec.loss=sampled", "sasrec.negative_sampling=in-batch"],
    "ss-mixed": [*RECIPE, "sasrec.loss=sampled", "sasrec.negatives=256", "sasrec.negative_sampling=mixed"],
    "ss-mixed-nologq": [*RECIPE, "sasrec.loss=sampled", "sasrec.negatives=256", "sasrec.negative_sampling=mixed",
                        "sasrec.logq=false"],
    "gbce": [*RECIPE, "sasrec.loss=gbce", "sasrec.negatives=256"],
    "ss-uniform-nobucket": [*RECIPE, "sasrec.loss=sampled", "sasrec.negatives=256", "sasrec.length_bucketing=false"],
    "ss-mixed-nobucket": [*RECIPE, "sasrec.loss=sampled", "sasrec.negatives=256", "sasrec.negative_sampling=mixed",
                          "sasrec.length_bucketing=false"],
    "ce": [*RECIPE, "sasrec.loss=ce", "sasrec.patience=10", "sasrec.max_train_s=1500"],
    "ce-2l": [],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="beauty", help="a preset in configs/ (beauty, sports, yelp)")
    p.add_argument("--variants", default="ss-uniform,ss-mixed,ss-inbatch,gbce,ce")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="config override for every variant (repeatable)")
    p.add_argument("--out-dir", default="runs/bench-sasrec_losses")
    args = p.parse_args()
    base_sets = [*([f"data.data_root={args.data_root}"] if args.data_root else []), *args.set]
    first_root = None
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; known: {', '.join(VARIANTS)}")
        cfg = bench_config(Path("configs") / f"{args.dataset}.yaml", [*VARIANTS[name], *base_sets], args.threads)
        root = variant_dir(args.out_dir, args.dataset, name)
        ctx = open_variant(cfg, root)
        if first_root is not None:
            share_nodes(ctx, first_root, ["data"])
        first_root = first_root or root
        t0 = time.perf_counter()
        ctx.graph.ensure("sasrec")
        scorer, split, ev = ctx.scorer("sasrec"), ctx.get_split(), cfg.eval
        history = read_json(root / "sasrec" / "history.json")
        info = {
            "epochs": len(history),
            "best_epoch": max(history, key=lambda h: h.get("valid_ndcg@10", -1))["epoch"],
            "s_per_epoch_median": round(float(np.median([h["train_s"] for h in history])), 2),
            "train_wall_s": round(ctx.graph.marker("sasrec")["wall_s"], 1),
            "best_valid_ndcg@10": round(max(h.get("valid_ndcg@10", 0.0) for h in history), 5),
        }
        rows = []
        for masked in (False, True):
            r = compute_ranks(scorer.score, split.test, cfg.sasrec.max_len, ev.batch_size, masked, cfg.run.device)
            metrics, _ = metrics_with_ci(r, ks=(5, 10, 20))
            metrics.update(info)
            model = name + ("-masked" if masked else "")
            rows.append(row("sasrec_losses", args.dataset, model, metrics, time.perf_counter() - t0,
                            config=read_json(root / "sasrec" / "config.json")["config"], masked=masked))
            print(model, {k: v for k, v in metrics.items() if not k.endswith("_ci95")}, flush=True)
        save_rows("sasrec_losses", rows)


if __name__ == "__main__":
    main()
