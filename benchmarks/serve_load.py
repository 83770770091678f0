"""Load test of ``thinkrec serve``: fixed arrival rates against the server in a subprocess on 127.0.0.1.

    python benchmarks/serve_load.py [--run runs/beauty] [--rates 25,50,100,200,400] [--duration 60] [--profile NAME]

An open-loop client (httpx, asyncio) sends ``POST /v1/recommend {"user": u, "k": 10}`` for seeded random test
users at each fixed rate for ``--duration`` seconds and stops by itself; latency runs from each request's scheduled
send time (so a slow server cannot hide queueing), at most ``--max-inflight`` requests are open (beyond that a
request counts as ``client_dropped``). Per rate: achieved rate, p50 / p95 / p99 latency, responses by status, mean
micro-batch size and seconds per request in each funnel stage (from the server's ``/metrics``), server peak RSS,
the client's own CPU use (it shares the 2 cores). Then an overload phase at 2× the highest rate held with p99 <
100 ms: 503s expected, the server must stay up with bounded memory. Writes ``benchmarks/results/serve_load.json``
(model ``funnel`` or ``funnel-<profile>``, dataset from the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row, save_rows  # noqa: E402


def _metrics(client: httpx.Client) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(("thinkrec_stage_seconds_total", "thinkrec_batch_size_sum", "thinkrec_batch_size_count")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class _RssWatch(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = psutil.Process(pid), 0.0, False

    def run(self) -> None:
        while not self.stop:
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.2)


async def _phase(url: str, rate: float, duration: float, users: list[str], max_inflight: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lat: list[float] = []
    status: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        inflight = 0

        async def one(t_sched: float, user: str) -> None:
            nonlocal inflight
            try:
                r = await client.post("/v1/recommend", json={"user": user, "k": 10})
                status[str(r.status_code)] += 1
                if r.status_code == 200:
                    lat.append(loop.time() - t_sched)
            except httpx.HTTPError as e:
                status[type(e).__name__] += 1
            finally:
                inflight -= 1

        tasks = []
        start = loop.time()
        n = int(rate * duration)
        for i in range(n):
            t_sched = start + i / rate
            delay = t_sched - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if inflight >= max_inflight:
                status["client_dropped"] += 1
                continue
            inflight += 1
            tasks.append(asyncio.create_task(one(t_sched, users[int(rng.integers(len(users)))])))
        sent_s = loop.time() - start
        await asyncio.gather(*tasks)
        wall = loop.time() - start
    ms = np.array(lat) * 1000
    q = (lambda p: round(float(np.percentile(ms, p)), 2)) if len(ms) else (lambda p: None)
    return {"rate": rate, "sent": n, "ok": len(lat), "achieved_rps": round(len(lat) / max(wall, 1e-9), 1),
            "send_s": round(sent_s, 2), "wall_s": round(wall, 2), "p50_ms": q(50), "p95_ms": q(95), "p99_ms": q(99),
            "max_ms": q(100), "status": dict(status)}


def quality(run: str, per_source: int | None, batch_size: int = 256) -> dict[str, float]:
    """Test R@10 / N@10 of the list the server serves (with the serving profile), over every test user, with the
    history evaluation saw — the quality cost of a profile beside the run's own ``eval/metrics.json``."""
    import torch

    from thinkrec.pipeline.funnel import load
    from thinkrec.serve.app import apply_profile

    torch.set_flush_denormal(True)
    funnel = load(run)
    if per_source is not None:
        apply_profile(funnel, per_source)
    ex = funnel.split.test
    users = [funnel.user_ids[int(u)] for u in ex.users]
    recs = funnel.recommend(users=users, k=10, as_of="test", batch_size=batch_size)
    targets = [funnel.item_ids[int(t)] for t in ex.targets]
    pos = np.array([next((j for j, it in enumerate(r.items) if it.item_id == t), -1) for r, t in zip(recs, targets, strict=True)])
    hit = pos >= 0
    return {"recall@10": round(float(hit.mean()), 5),
            "ndcg@10": round(float(np.where(hit, 1.0 / np.log2(np.maximum(pos, 0) + 2), 0.0).mean()), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/beauty")
    ap.add_argument("--rates", default="25,50,100,200,400")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--overload-duration", type=float, default=30.0)
    ap.add_argument("--max-inflight", type=int, default=1024)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--profile", default=None, help="serving profile name (a row funnel-<profile>)")
    ap.add_argument("--serve-args", default="", help="extra `thinkrec serve` options, e.g. '--max-batch 32'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-source", type=int, default=None, help="serving profile (thinkrec serve --per-source)")
    ap.add_argument("--quality", action="store_true", help="also measure the served list's test R@10 / N@10")
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, "-m", "thinkrec.cli", "serve", "--run", args.run, "--port", str(args.port),
           "--log-level", "warning", *args.serve_args.split(),
           *(["--per-source", str(args.per_source)] if args.per_source else [])]
    t0 = time.perf_counter()
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    watch = _RssWatch(server.pid)
    watch.start()
    try:
        sync = httpx.Client(base_url=url, timeout=30.0)
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited with {server.returncode}")
            try:
                if sync.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        startup_s = time.perf_counter() - t0
        info = sync.get("/v1/info").json()
        users = sync.get("/v1/users", params={"limit": 1000, "offset": 0}).json()["users"]
        print(f"server ready in {startup_s:.1f}s: {info['stages']}", flush=True)
        me = psutil.Process()
        phases = []
        for rate in (float(r) for r in args.rates.split(",")):
            m0, c0, w0 = _metrics(sync), me.cpu_times(), time.perf_counter()
            ph = asyncio.run(_phase(url, rate, args.duration, users, args.max_inflight, args.seed))
            m1, c1, w1 = _metrics(sync), me.cpu_times(), time.perf_counter()
            d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
            batches = d.get("thinkrec_batch_size_count", 0.0)
            ph["mean_batch"] = round(d.get("thinkrec_batch_size_sum", 0.0) / batches, 2) if batches else None
            ph["stage_ms_per_request"] = {k.split('"')[1]: round(v / max(ph["ok"], 1) * 1000, 3)
                                          for k, v in d.items() if k.startswith("thinkrec_stage_seconds_total")}
            ph["client_cpu_cores"] = round((c1.user + c1.system - c0.user - c0.system) / (w1 - w0), 3)
            ph["server_peak_rss_mb"] = round(watch.peak, 1)
            print(json.dumps(ph), flush=True)
            phases.append(ph)
            if ph["achieved_rps"] < 0.9 * rate:  # saturated: higher rates only queue more
                print(f"saturated at {rate:g} req/s: higher rates skipped", flush=True)
                break
        held = [p for p in phases if p["p99_ms"] is not None and p["p99_ms"] < 100 and p["ok"] == p["sent"]
                and p["achieved_rps"] >= 0.95 * p["rate"]]
        max_rps = max((p["rate"] for p in held), default=0.0)
        at100 = next((p for p in phases if p["rate"] == 100), None)
        overload = None
        # 2× the highest rate held (or, when none was, 2× the highest rate served in full)
        base = max_rps or max((p["rate"] for p in phases if p["achieved_rps"] >= 0.95 * p["rate"]), default=0.0)
        if base > 0:
            rss_before = watch.peak
            overload = asyncio.run(_phase(url, 2 * base, args.overload_duration, users, args.max_inflight, args.seed + 1))
            overload["server_alive"] = server.poll() is None and sync.get("/healthz").status_code == 200
            overload["server_peak_rss_mb"] = round(watch.peak, 1)
            overload["rss_growth_mb"] = round(watch.peak - rss_before, 1)
            print("overload", json.dumps(overload), flush=True)
        errors = sum(v for p in held for k, v in p["status"].items() if k != "200")
        metrics = {"max_rps_p99_100ms": max_rps, "p99_ms_at_100rps": at100["p99_ms"] if at100 else None,
                   "errors": errors, "peak_rss_mb": round(watch.peak, 1)}
        model = "funnel" + (f"-{args.profile}" if args.profile else "")
        watch.stop = True
        server.terminate()
        server.wait(30)
        if args.quality:
            metrics.update(quality(args.run, args.per_source))
            print("quality", metrics, flush=True)
        path = save_rows("serve_load", [row("serve_load", info["dataset"], model, metrics, time.perf_counter() - t0,
                                            run=args.run, served=info["stages"], serve_args=args.serve_args,
                                            per_source=args.per_source,
                                            startup_s=round(startup_s, 1), duration_s=args.duration,
                                            by_rate=phases, overload=overload)])
        print(f"{model}: {metrics} → {path}")
    finally:
        watch.stop = True
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
