"""SASRec (full-softmax CE) on Amazon Beauty 2014: leave-one-out, full ranking, history ≤ 50 — a thin driver over
the pipeline (configs/<dataset>.yaml; nodes data → popularity → sasrec, then the pipeline's evaluation).

    python benchmarks/sasrec_beauty.py [--dataset beauty] [--data-root ../shared/data] [--threads 2]
        [--set sasrec.dropout=0.3 ...] [--recbole-python /work/recbole-venv/bin/python --recbole-epochs 1]

The run directory is runs/bench-sasrec_beauty/<dataset> (a rerun reuses what is up to date). Writes
benchmarks/results/sasrec_beauty.json: popularity and SASRec test R@5/10/20, N@5/10/20 with 95 % bootstrap CIs,
seconds per epoch, training wall time and peak RSS. With --recbole-python it then runs RecBole 1.2.1's SASRec
(benchmarks/recbole_sasrec.py, in its own venv) in the same sitting, so the epoch times compare like for like.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, row, save_rows  # noqa: E402
from thinkrec.pipeline.config import load_run_config  # noqa: E402
from thinkrec.pipeline.run import run_pipeline  # noqa: E402
from thinkrec.utils.io import read_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset", default="beauty", help="a preset in configs/ (beauty, sports, yelp)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--out-dir", default="runs/bench-sasrec_beauty")
    p.add_argument("--recbole-python", default=None, help="python of a venv with recbole==1.2.1 (not a dependency)")
    p.add_argument("--recbole-epochs", type=int, default=1)
    args = p.parse_args()
    sets = [f"run.threads={args.threads}", *([f"data.data_root={args.data_root}"] if args.data_root else []), *args.set]
    cfg = load_run_config(Path("configs") / f"{args.dataset}.yaml", sets)
    root = Path(args.out_dir) / args.dataset

    t_all = time.perf_counter()
    run_pipeline(cfg, ["data", "popularity", "sasrec", "evaluate"], run_dir=root)
    test = read_json(root / "eval" / "metrics.json")
    rows = [row("sasrec_beauty", args.dataset, "popularity", _with_ci(test["popularity"]), 0.0)]
    history = read_json(root / "sasrec" / "history.json")
    epoch_s = [h["train_s"] for h in history]
    metrics = _with_ci(test["sasrec"])
    metrics.update(
        s_per_epoch=round(float(np.mean(epoch_s)), 2),
        s_per_epoch_min=round(float(np.min(epoch_s)), 2),
        s_per_epoch_median=round(float(np.median(epoch_s)), 2),
        epochs=len(history),
        best_epoch=max(history, key=lambda h: h.get("valid_ndcg@10", -1))["epoch"],
        train_wall_s=round(read_json(root / "stages" / "sasrec.json")["wall_s"], 1),
        users_per_s=round(test["sasrec"]["users_per_s"], 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    rows.append(row("sasrec_beauty", args.dataset, "sasrec", metrics, time.perf_counter() - t_all,
                    config=read_json(root / "sasrec" / "config.json")["config"], threads=args.threads, history=history))
    print({k: v for k, v in metrics.items() if not k.endswith("_ci95")})

    if args.recbole_python:
        out = RESULTS / "sasrec_beauty_recbole.json"
        cmd = [args.recbole_python, str(Path(__file__).with_name("recbole_sasrec.py")), "--epochs", str(args.recbole_epochs),
               "--threads", str(args.threads), "--out", str(out), "--dropout", str(cfg.sasrec.dropout)]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        print("running RecBole in the same sitting:", " ".join(cmd))
        subprocess.run(cmd, check=True)
        rec = read_json(out)[0]
        rec["benchmark"] = "sasrec_beauty"
        rows.append(rec)
        ratio = metrics["s_per_epoch_median"] / rec["metrics"]["s_per_epoch"]
        print(f"epoch time ratio thinkrec / RecBole = {ratio:.3f}")
    save_rows("sasrec_beauty", rows)


def _with_ci(result: dict) -> dict[str, float | list[float]]:
    """The pipeline's test row (means + bootstrap CIs) in this benchmark's row format."""
    out: dict[str, float | list[float]] = {k: round(v, 5) for k, v in result["metrics"].items()}
    for k in ("recall@10", "ndcg@10"):
        out[f"{k}_ci95"] = [round(v, 5) for v in result["ci95"][k]]
    return out


if __name__ == "__main__":
    main()
