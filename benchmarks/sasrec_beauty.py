"""SASRec (full-softmax CE) on Amazon Beauty 2014: leave-one-out, full ranking, history ≤ 50.

    python benchmarks/sasrec_beauty.py [--data-root ../shared/data] [--threads 2]
        [--recbole-python /work/recbole-venv/bin/python --recbole-epochs 1]

Writes benchmarks/results/sasrec_beauty.json: popularity and SASRec test R@5/10, N@5/10 with 95 % bootstrap
CIs, seconds per epoch, total wall time and peak RSS. With --recbole-python it then runs RecBole 1.2.1's SASRec
(benchmarks/recbole_sasrec.py, in its own venv) in the same sitting, so the epoch times compare like for like.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, row, save_rows  # noqa: E402
from thinkrec.baselines.popularity import Popularity  # noqa: E402
from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec  # noqa: E402
from thinkrec.data import load_dataset  # noqa: E402
from thinkrec.data.splits import leave_one_out  # noqa: E402
from thinkrec.eval.protocol import evaluate_full_ranking  # noqa: E402
from thinkrec.eval.stats import bootstrap_ci  # noqa: E402
from thinkrec.utils.io import read_json  # noqa: E402

KS = (5, 10, 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--recbole-python", default=None, help="python of a venv with recbole==1.2.1 (not a dependency)")
    p.add_argument("--recbole-epochs", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t_all = time.perf_counter()
    ds = load_dataset(args.dataset, args.data_root)
    split = leave_one_out(ds)
    rows = []

    t = time.perf_counter()
    pop = Popularity.fit(split)
    means, per_user = evaluate_full_ranking(pop.score, split.test, ks=KS)
    rows.append(row("sasrec_beauty", args.dataset, "popularity", _with_ci(means, per_user), time.perf_counter() - t))

    cfg = SASRecConfig(d_model=args.d_model, dropout=args.dropout, lr=args.lr, epochs=args.epochs, patience=args.patience,
                       seed=args.seed, max_len=50)
    t = time.perf_counter()
    model, history = train_sasrec(split, cfg, log=print)
    train_wall = time.perf_counter() - t
    t_eval = time.perf_counter()
    means, per_user = evaluate_full_ranking(model.score, split.test, ks=KS, max_len=cfg.max_len)
    eval_s = time.perf_counter() - t_eval
    epoch_s = [h["train_s"] for h in history]
    metrics = _with_ci(means, per_user)
    metrics.update(
        s_per_epoch=round(float(np.mean(epoch_s)), 2),
        s_per_epoch_min=round(float(np.min(epoch_s)), 2),
        s_per_epoch_median=round(float(np.median(epoch_s)), 2),
        epochs=len(history),
        best_epoch=max(history, key=lambda h: h.get("valid_ndcg@10", -1))["epoch"],
        train_wall_s=round(train_wall, 1),
        users_per_s=round(len(split.test) / eval_s, 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    rows.append(row("sasrec_beauty", args.dataset, "sasrec", metrics, time.perf_counter() - t_all,
                    config=vars(cfg), threads=args.threads, history=history))
    print({k: v for k, v in metrics.items() if not k.endswith("_ci95")})

    if args.recbole_python:
        out = RESULTS / "sasrec_beauty_recbole.json"
        cmd = [args.recbole_python, str(Path(__file__).with_name("recbole_sasrec.py")), "--epochs", str(args.recbole_epochs),
               "--threads", str(args.threads), "--out", str(out), "--dropout", str(args.dropout)]
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


def _with_ci(means: dict[str, float], per_user: dict[str, np.ndarray]) -> dict[str, float]:
    out: dict[str, float | list[float]] = {k: round(v, 5) for k, v in means.items()}
    for k in ("recall@10", "ndcg@10"):
        _, lo, hi = bootstrap_ci(per_user[k], 1000)
        out[f"{k}_ci95"] = [round(lo, 5), round(hi, 5)]
    return out


if __name__ == "__main__":
    main()
