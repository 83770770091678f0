"""Kill a small synthetic ``thinkrec run`` with SIGKILL at 20 random moments in a row, then let it finish, and
check that its final metrics (and every trained weight) equal those of an uninterrupted run with the same seed.

    python benchmarks/resume.py [--kills 20] [--seed 0] [--out runs/resume-bench]

The run covers every trainer of the default funnel — SASRec, CoBa (an RQ-VAE with balancing), TIGER and S²GR,
the list evaluator, a DNN and EGLR with RL — on a synthetic catalogue small enough to finish in a few minutes.
Kill moments are drawn (seeded) uniformly between 3 s and a tenth of the uninterrupted run's wall time after each
start (the window doubles after each kill that lands where the previous one did, so that kills do not pile up
inside one long epoch); every start resumes from the previous one's checkpoints; if the run finishes before the last kill, the kills
so far are reported. Compared: every number in ``eval/metrics.json``,
``funnel.json`` and each re-ranker's ``metrics.json`` except wall-clock fields, and a SHA-256 of the tensors and
metadata of every ``*.safetensors`` model file. Row: ``benchmarks/results/resume.json`` (dataset ``synthetic``, model ``run``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row, save_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "run.threads=2", "run.seed=0",
    "data.options={n_users: 2000, n_items: 800, n_impressions: 1500}",
    "sasrec.epochs=12", "sasrec.patience=12", "sasrec.max_len=30",
    "tokenize.method=coba", "tokenize.quantizer={codebook_size: 16, epochs: 40, hidden_dims: [64], batch_size: 64}",
    "retrieval.train.epochs=4", "retrieval.train.valid_users=400",
    "rerank.models=[initial, dnn, eglr]", "rerank.train.epochs=6", "rerank.train.evaluator_epochs=6",
    "rerank.train.rl_epochs=3",
]
TIME_KEYS = ("_s", "seconds", "latency", "wall", "per_s", "finished", "timestamp")


def command(run_dir: Path) -> list[str]:
    args = [sys.executable, "-c", "from thinkrec.cli import main; main()", "run", "--config",
            str(ROOT / "configs" / "synthetic.yaml"), "--set", f"run.out_dir={run_dir.parent}", "--name", run_dir.name]
    for o in OVERRIDES:
        args += ["--set", o]
    return args


def _timeless(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if not any(t in k for t in TIME_KEYS)}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def outcome(run_dir: Path) -> dict[str, Any]:
    """What must not depend on kills: the metrics (without wall times) and the bytes of every model file."""
    metrics = {str(p.relative_to(run_dir)): _timeless(json.loads(p.read_text()))
               for p in sorted([run_dir / "eval" / "metrics.json", run_dir / "funnel.json",
                                *run_dir.glob("rerank/*/metrics.json")]) if p.exists()}
    weights = {str(p.relative_to(run_dir)): weights_digest(p)
               for p in sorted(run_dir.rglob("*.safetensors")) if p.name != "state.safetensors"
               # the workshop's model files: not checkpoints, published copies, or temporaries of killed writes
               and not ({"checkpoints", "generations"} & set(p.relative_to(run_dir).parts))
               and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)}
    return {"metrics": metrics, "weights": weights}


def weights_digest(path: Path) -> str:
    """SHA-256 over a safetensors file's sorted metadata, tensor names and tensor bytes (the header's JSON order is
    not stable between writes, so the file's bytes are not compared)."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode() + t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _last_log_line(run_dir: Path) -> str:
    log = run_dir / "log.txt"
    if not log.exists():
        return ""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][20:120] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "resume-bench"))
    args = ap.parse_args()
    out = Path(args.out)
    full_dir, killed_dir = out / "uninterrupted", out / "killed"
    for d in (full_dir, killed_dir):
        shutil.rmtree(d, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MKL_CBWR": os.environ.get("MKL_CBWR", "AUTO")}

    t0 = time.perf_counter()
    done = subprocess.run(command(full_dir), env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the uninterrupted run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    full_s = time.perf_counter() - t0
    print(f"uninterrupted run: {full_s:.0f} s")

    rng = np.random.default_rng(args.seed)
    kills: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    stalls = 0  # kills in a row that landed where the previous one did (a node's epoch outlasts the window)
    for i in range(args.kills):
        delay = float(rng.uniform(3.0, max(6.0, full_s / 10) * 2 ** stalls))
        proc = subprocess.Popen(command(killed_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            finished = False
        where = _last_log_line(killed_dir)
        if finished:
            err = proc.stderr.read() if proc.stderr else ""
            if proc.returncode:
                raise SystemExit(f"start {i + 1} failed instead of being killed:\n{err[-3000:]}")
            print(f"start {i + 1}: finished before its kill at {delay:.1f} s")
            kills.append({"delay_s": round(delay, 1), "killed": False, "at": where})
            break
        stalls = stalls + 1 if kills and where.split(" ", 1)[-1] == kills[-1]["at"].split(" ", 1)[-1] else 0
        print(f"kill {i + 1}: after {delay:.1f} s, at: {where}")
        kills.append({"delay_s": round(delay, 1), "killed": True, "at": where})
    done = subprocess.run(command(killed_dir), env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the final resumed run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    killed_s = time.perf_counter() - t1

    a, b = outcome(full_dir), outcome(killed_dir)
    same_metrics, same_weights = a["metrics"] == b["metrics"], a["weights"] == b["weights"]
    differing = sorted(k for k in set(a["weights"]) | set(b["weights"]) if a["weights"].get(k) != b["weights"].get(k))
    n_killed = sum(k["killed"] for k in kills)
    print(f"kills survived: {n_killed}; metrics identical: {same_metrics}; weights identical: {same_weights}"
          + (f" (differ: {differing})" if differing else ""))
    metrics = {"kills": n_killed, "identical": int(same_metrics and same_weights), "metrics_identical": int(same_metrics),
               "weights_identical": int(same_weights), "model_files": len(a["weights"]),
               "uninterrupted_s": round(full_s, 1), "killed_and_resumed_s": round(killed_s, 1)}
    path = save_rows("resume", [row("resume", "synthetic", "run", metrics, full_s + killed_s, kills=kills,
                                    overrides=OVERRIDES, differing_files=differing)])
    print(path)


if __name__ == "__main__":
    main()
