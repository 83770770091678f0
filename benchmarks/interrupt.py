"""Kill campaign at random instants: SIGKILL a small synthetic ``thinkrec run`` ≥ 50 times, inside every node and
every write step, with config edits between restarts; after each kill, load and serve what is left.

    python benchmarks/interrupt.py [--kills 57] [--seed 0] [--out runs/interrupt-bench]

1. An uninterrupted run of config A in a fresh directory: the reference metrics and weights, and each step's
   duration (from the ``<node>: building`` / ``<step>: writing`` lines of its log).
2. ``--kills`` attempts on one directory. Attempt i targets step ``i mod n`` of that list (every graph node, then
   the evaluation, funnel record, generation publish and report writes). Before it, the config is edited as a user
   would: for a target upstream of re-ranking, the synthetic data gets a seed never used before (everything
   rebuilds); for a target in or after re-ranking, the re-ranking feature groups change to the next subset (the
   upstream nodes are reused — a resume). The directory starts as a copy of the finished reference run (its first
   generation). The run starts; when its log shows the target's start, the driver waits a uniform random time in
   [0, 1.2 × the step's reference duration] (so some kills land in the gap between a node's writes and the next
   node) and SIGKILLs it (the driver tails the run's log every 0.2 ms). Where it landed is the last step the log shows started. Steps no kill landed in (a few
   milliseconds long) are then retried (``--sweep`` times at most) with the kill at the instant they start.
3. After each kill: ``thinkrec.load`` + :meth:`Funnel.verify` (the served final list of 200 test users against
   the per-user N@10 its generation's evaluation recorded) must match, or the load must refuse with a
   :class:`~thinkrec.errors.UserError` (a clean refusal); then ``thinkrec serve`` on the directory must either
   refuse to start (exit 2, one line) or answer every request of a probe (info, recommend for 20 users with the
   served funnel, every listed re-ranker and retriever, a batch) without a 5xx.
4. The config goes back to A and the run finishes; its metrics (wall-clock fields dropped) and model weights must
   equal the uninterrupted run's.

Row: ``benchmarks/results/interrupt.json`` (benchmark ``interrupt``, dataset ``synthetic``, model ``run``):
kills, inconsistent_loads, server_5xx, nodes_hit (distinct steps the kills landed in) of n_steps, identical.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row, save_rows  # noqa: E402
from resume import outcome  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "run.threads=1", "run.seed=0",  # one core for the run, the other for the driver that times the kills
    "sasrec.epochs=3", "sasrec.patience=3",
    "tokenize.quantizer.codebook_size=8",
    "retrieval.train.epochs=2", "retrieval.train.valid_users=200",
    "rerank.source=funnel", "rerank.models=[initial, dnn, eglr]",
    "rerank.train.epochs=2", "rerank.train.evaluator_epochs=2", "rerank.train.rl_epochs=1",
]
DATA = "data.options={{n_users: 600, n_items: 300, n_impressions: 300, seed: {seed}}}"
#: re-ranking edits: every subset of the feature groups, in a fixed order (a kill never sees the same one twice in a
#: row, so the nodes after re-ranking's lists are always rebuilt)
GROUPS = ("cooc", "sid", "brand", "trend")
FEATURES = tuple(f"rerank.feature_groups=[{', '.join(g for j, g in enumerate(GROUPS) if mask >> j & 1)}]"
                 for mask in range(15, -1, -1))
DOWNSTREAM = ("rerank/", "evaluate", "funnel", "publish", "report")
STEP = re.compile(r"^(\S+): (building|writing)$")


def config_args(data_seed: int, features: int) -> list[str]:
    return [*BASE, DATA.format(seed=data_seed), FEATURES[features]]


def command(run_dir: Path, overrides: list[str]) -> list[str]:
    args = [sys.executable, "-m", "thinkrec.cli", "run", "--config", str(ROOT / "configs" / "synthetic.yaml"),
            "--set", f"run.out_dir={run_dir.parent}", "--name", run_dir.name]
    for o in overrides:
        args += ["--set", o]
    return args


def log_steps(run_dir: Path, text: str | None = None) -> list[tuple[float, str]]:
    """(time, step) of every step start in the run's log (or in ``text``), oldest first."""
    log = run_dir / "log.txt"
    if text is None:
        text = log.read_text(errors="replace") if log.exists() else ""
    out = []
    for line in text.splitlines():
        stamp, _, msg = line[:23], line[23:24], line[24:]
        m = STEP.match(msg.strip())
        if m:
            out.append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(1)))
    return out


def durations(run_dir: Path) -> dict[str, float]:
    """Each step's duration in an uninterrupted run: from its start to the next step's start (the last: to the
    log's last line)."""
    steps = log_steps(run_dir)
    lines = (run_dir / "log.txt").read_text().splitlines()
    end = datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return {name: max(0.0005, (steps[i + 1][0] if i + 1 < len(steps) else end) - t) for i, (t, name) in enumerate(steps)}


def check_load(run_dir: Path) -> dict[str, Any]:
    """Load + verify in a fresh process (as a user would): matched, refused (one clean line) or inconsistent."""
    code = ("import json, sys, thinkrec\nfrom thinkrec.errors import UserError\n"
            "try:\n    f = thinkrec.load(sys.argv[1])\nexcept UserError as e:\n"
            "    print(json.dumps({'refused': str(e)})); sys.exit(0)\n"
            "print(json.dumps({'generation': f.generation, **f.verify(200)}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return {"inconsistent": True, "error": (proc.stderr or proc.stdout)[-600:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["inconsistent"] = bool(out.get("mismatches"))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, path: str, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def check_server(run_dir: Path) -> dict[str, Any]:
    """Start ``thinkrec serve`` on the directory and probe it: a refusal to start must be exit 2 with one line;
    a server that starts must answer no 5xx."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "thinkrec.cli", "serve", "--run", str(run_dir), "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                lines = [ln for ln in (proc.stdout.read() + proc.stderr.read()).splitlines() if ln.strip()]
                clean = proc.returncode == 2 and len(lines) == 1
                return {"started": False, "refused_cleanly": clean, "message": " | ".join(lines)[-300:], "5xx": 0 if clean else 1}
            try:
                if _call(base, "/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        else:
            return {"started": False, "refused_cleanly": False, "message": "not ready in 120 s", "5xx": 1}
        statuses = []
        status, info = _call(base, "/v1/info")
        statuses.append(status)
        status, users = _call(base, "/v1/users?limit=20")
        statuses.append(status)
        ids = (users or {}).get("users", [])
        for u in ids:
            statuses.append(_call(base, "/v1/recommend", {"user": u, "k": 10})[0])
        for rr in (info or {}).get("rerankers", []):
            statuses.append(_call(base, "/v1/recommend", {"user": ids[0], "k": 10, "retriever": "merged", "reranker": rr})[0])
        for sc in (info or {}).get("retrievers", []):
            statuses.append(_call(base, "/v1/recommend", {"user": ids[0], "k": 5, "retriever": sc, "rerank": False})[0])
        statuses.append(_call(base, "/v1/recommend/batch", {"requests": [{"user": u, "k": 5} for u in ids]})[0])
        return {"started": True, "requests": len(statuses), "5xx": sum(s >= 500 for s in statuses),
                "statuses": sorted({int(s) for s in statuses})}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=57)
    ap.add_argument("--sweep", type=int, default=6, help="extra tries per step no kill landed in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "interrupt-bench"))
    args = ap.parse_args()
    out = Path(args.out)
    ref_dir, killed_dir = out / "uninterrupted", out / "killed"
    for d in (ref_dir, killed_dir):
        shutil.rmtree(d, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t_start = time.perf_counter()

    config_a = config_args(0, 0)
    done = subprocess.run(command(ref_dir, config_a), env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the uninterrupted run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    dur = durations(ref_dir)
    steps = list(dur)
    print(f"uninterrupted run: {time.perf_counter() - t_start:.0f} s; {len(steps)} steps: "
          + ", ".join(f"{s} {d:.1f}s" for s, d in dur.items()), flush=True)

    shutil.copytree(ref_dir, killed_dir)  # a finished run with its first generation: the kills edit and rerun it
    rng = np.random.default_rng(args.seed)
    state = {"data_seed": 0, "features": 0}
    seeds_used = {0}
    kills: list[dict[str, Any]] = []
    schedule = [(steps[i % len(steps)], False) for i in range(args.kills)]
    i = 0
    while i < len(schedule):
        target, sweep = schedule[i]
        if target.startswith(DOWNSTREAM):  # a re-ranking edit: the upstream nodes are reused (a resume)
            state["features"] = (state["features"] + 1) % len(FEATURES)
        else:  # a data edit (a seed never used before): everything rebuilds
            state["data_seed"] = max(seeds_used) + 1
            seeds_used.add(state["data_seed"])
        overrides = config_args(state["data_seed"], state["features"])
        n_before = len(log_steps(killed_dir))
        delay = 0.0 if sweep else float(rng.uniform(0.0, 1.2 * dur[target]))
        log = killed_dir / "log.txt"
        offset = log.stat().st_size if log.exists() else 0
        proc = subprocess.Popen(command(killed_dir, overrides), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(10))
        killed, pending = False, b""
        with open(log, "rb") as fh:  # the log exists (copied from the reference run): tail its new bytes
            fh.seek(offset)
            while proc.poll() is None:  # a tight poll (the console's live display delays stdout by ~0.1 s)
                pending += fh.read()
                *lines, pending = pending.split(b"\n")
                if any((m := STEP.match(ln[24:].decode(errors="replace").strip())) and m.group(1) == target
                       for ln in lines):
                    if delay:
                        time.sleep(delay)
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        killed = True
                    break
                time.sleep(0.0002)
        proc.wait()
        started = [s for _, s in log_steps(killed_dir)[n_before:]]
        landed = started[-1] if started else "(start-up)"
        if not killed:
            err = proc.stderr.read() if proc.stderr else ""
            if proc.returncode:
                raise SystemExit(f"attempt {i + 1} failed instead of being killed:\n{err[-3000:]}")
        load = check_load(killed_dir)
        server = check_server(killed_dir)
        rec = {"attempt": i + 1, "target": target, "sweep": sweep, "killed": killed, "landed": landed if killed else None,
               "config": dict(state), "load": load, "server": server}
        kills.append(rec)
        print(f"{i + 1:3d} target {target:28s} {'killed in ' + landed if killed else 'finished first':40s} "
              f"load: {'refused' if 'refused' in load else ('INCONSISTENT' if load['inconsistent'] else 'gen ' + str(load.get('generation')) + ' matches')}"
              f"; server: {'refused' if not server['started'] else str(server['5xx']) + ' 5xx'}", flush=True)
        i += 1
        if i == len(schedule):  # a sweep: steps no kill landed in yet (a few ms long), killed as soon as they start
            hit = {k["landed"] for k in kills if k["killed"]}
            tries = {s: sum(k["target"] == s for k in kills) for s in steps}
            schedule += [(s, True) for s in steps if s not in hit and tries[s] < args.kills // len(steps) + args.sweep]

    # back to config A and to the end: the same metrics and weights as the uninterrupted run
    done = subprocess.run(command(killed_dir, config_a), env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the final run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    a, b = outcome(ref_dir), outcome(killed_dir)
    identical = a["metrics"] == b["metrics"] and a["weights"] == b["weights"]
    differing = sorted(k for k in set(a["weights"]) | set(b["weights"]) if a["weights"].get(k) != b["weights"].get(k))
    killed = [k for k in kills if k["killed"]]
    metrics = {
        "kills": len(killed),
        "inconsistent_loads": sum(bool(k["load"].get("inconsistent")) for k in kills),
        "server_5xx": sum(int(k["server"]["5xx"]) for k in kills),
        "nodes_hit": len({k["landed"] for k in killed}),
        "n_steps": len(steps),
        "identical": int(identical),
        "loads_matched": sum("mismatches" in k["load"] and not k["load"]["inconsistent"] for k in kills),
        "loads_refused": sum("refused" in k["load"] for k in kills),
        "servers_started": sum(k["server"]["started"] for k in kills),
        "servers_refused_cleanly": sum(bool(k["server"].get("refused_cleanly")) for k in kills),
    }
    print(json.dumps(metrics), flush=True)
    if differing:
        print("differing weights:", differing)
    missed = sorted(set(steps) - {k["landed"] for k in killed})
    path = save_rows("interrupt", [row("interrupt", "synthetic", "run", metrics, time.perf_counter() - t_start,
                                       steps=steps, missed_steps=missed, kills=kills, overrides=BASE,
                                       differing_files=differing)])
    print(path)


if __name__ == "__main__":
    main()
