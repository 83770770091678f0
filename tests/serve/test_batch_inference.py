"""``thinkrec recommend --users all --out`` sharded over 2 processes (torchrun, gloo on CPU) writes exactly the file
one process writes, and leaves no part files behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from thinkrec.pipeline.batch import shard

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recommend(run: Path, out: Path, procs: int) -> subprocess.CompletedProcess:
    # -r, not --run: torchrun classifies every argument and --run is an ambiguous prefix of its --run-path
    cmd = ["recommend", "-r", str(run), "--users", "all", "--out", str(out), "-k", "10", "--batch-size", "64"]
    if procs == 1:
        args = [sys.executable, "-m", "thinkrec.cli", *cmd]
    else:
        args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", "-m", "thinkrec.cli", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_shards_are_contiguous_and_cover_every_user_once():
    ids = [str(i) for i in range(11)]
    parts = [shard(ids, r, 3) for r in range(3)]
    assert sum(parts, []) == ids and [len(p) for p in parts] == [4, 3, 4]
    assert shard(ids, 0, 1) == ids and shard([], 1, 2) == []


def test_two_processes_write_what_one_writes(served_run, tmp_path):
    one = _recommend(served_run, tmp_path / "one.parquet", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _recommend(served_run, tmp_path / "two.parquet", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 process(es)" in two.stdout
    a, b = pl.read_parquet(tmp_path / "one.parquet"), pl.read_parquet(tmp_path / "two.parquet")
    assert a.height > 0 and a["user_id"].n_unique() == a.height // 10
    assert a.select("user_id", "rank", "item_id").equals(b.select("user_id", "rank", "item_id"))
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "two.parquet"]
