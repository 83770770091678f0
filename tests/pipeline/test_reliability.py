"""A run directory is held by one process at a time (and freed when its holder dies); NaN / inf stop a stage with
its name, step and tensor instead of producing garbage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.pipeline.rundir import RunDir, RunDirBusy
from thinkrec.utils.faults import NumericalError, check_finite

HOLD = """
import sys, time
from thinkrec.pipeline.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_a_run_directory_fails_naming_the_holder_until_it_dies(tmp_path):
    proc = _holder(tmp_path / "run", 60)
    try:
        t = time.perf_counter()
        with pytest.raises(RunDirBusy, match=rf"in use by pid {proc.pid} since"), RunDir(tmp_path / "run").lock():
            pass
        assert time.perf_counter() - t < 5
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a killed holder leaves no stale lock behind
        proc.wait()
    with RunDir(tmp_path / "run").lock():
        assert f"pid {os.getpid()}" in (tmp_path / "run" / ".lock").read_text()


def test_waiting_for_the_lock_succeeds_once_the_holder_finishes(tmp_path):
    proc = _holder(tmp_path / "run", 1.5)
    t = time.perf_counter()
    with RunDir(tmp_path / "run").lock(wait=30):
        assert time.perf_counter() - t > 1.0  # we got it only once the holder let go
    proc.wait()


def test_run_pipeline_refuses_a_busy_run_directory_before_any_work(tmp_path):
    from thinkrec.pipeline.config import RunConfig
    from thinkrec.pipeline.run import run_pipeline

    proc = _holder(tmp_path / "run", 60)
    try:
        with pytest.raises(RunDirBusy):
            run_pipeline(RunConfig(), ["data"], log=lambda m: None, run_dir=tmp_path / "run")
        assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "config.yaml").exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------------------------------------ numerical faults
def test_check_finite_names_stage_step_and_tensor():
    check_finite(torch.tensor([1.0, -2.0]), "s", 1, "x")
    check_finite(torch.tensor([1.0, float("-inf")]), "s", 1, "scores", allow_neg_inf=True)
    with pytest.raises(NumericalError, match=r"sasrec: non-finite loss at step 3\.7 \(1 NaN, 0 inf of 2 values\)"):
        check_finite(torch.tensor([1.0, float("nan")]), "sasrec", "3.7", "loss")
    with pytest.raises(NumericalError, match="0 NaN, 1 inf"):
        check_finite(torch.tensor([float("inf")]), "s", 0, "scores", allow_neg_inf=True)


def test_a_nan_loss_stops_sasrec_training_at_its_step(monkeypatch):
    from tests.baselines.test_sasrec import _planted
    from thinkrec.baselines.sasrec import SASRec, SASRecConfig, train_sasrec
    from thinkrec.data.splits import leave_one_out

    real = SASRec.loss
    calls = {"n": 0}

    def diverging(self, *a, **k):
        calls["n"] += 1
        loss = real(self, *a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(SASRec, "loss", diverging)
    cfg = SASRecConfig(d_model=8, n_layers=1, n_heads=1, max_len=8, batch_size=64, epochs=2, length_bucketing=False)
    with pytest.raises(NumericalError, match=r"sasrec: non-finite loss at step 1\.2"):
        train_sasrec(leave_one_out(_planted(n_users=300)), cfg, log=lambda m: None)


def test_nan_item_vectors_stop_the_tokenize_stage(monkeypatch):
    """A precomputed file with NaN is refused by its loader (naming the file); vectors that come out of the
    embedding model non-finite are caught before the quantizer sees them."""
    import thinkrec.tokenize.stage as stage
    from thinkrec.data.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(n_users=60, n_items=200, n_impressions=10))
    x = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    x[7, 2] = np.nan
    monkeypatch.setattr(stage, "embed_items", lambda dataset, cfg: x)
    with pytest.raises(NumericalError, match=r"tokenize: non-finite item vectors at step embedding \(1 NaN"):
        stage.run_tokenize(ds, None, stage.TokenizeConfig(), log=lambda m: None)


def test_nan_scores_stop_evaluation_but_minus_inf_exclusions_do_not():
    from tests.baselines.test_sasrec import _planted
    from thinkrec.data.splits import leave_one_out
    from thinkrec.eval.protocol import evaluate_full_ranking

    split = leave_one_out(_planted(n_users=40))

    def masked(users, tokens):
        s = torch.randn(len(users), split.n_items)
        s[:, 0] = float("-inf")
        return s

    evaluate_full_ranking(masked, split.test, ks=(10,))
    with pytest.raises(NumericalError, match="evaluate: non-finite scores at step batch 0"):
        evaluate_full_ranking(lambda u, t: torch.full((len(u), split.n_items), float("nan")), split.test, ks=(10,))


# ------------------------------------------------------------------------------------------------ storage faults
def test_a_full_disk_mid_run_is_one_clear_error_and_earlier_artifacts_stay(tmp_path, monkeypatch):
    """The data stage finishes; then every write fails as on a full disk: the run stops with a StorageError naming
    the file, the data stage's artifacts and marker are untouched, and nothing half-written is left."""
    import errno

    import thinkrec.utils.io as io
    from thinkrec.errors import StorageError, UserError
    from thinkrec.pipeline.config import RunConfig
    from thinkrec.pipeline.run import run_pipeline

    cfg = RunConfig()
    cfg.data.options = {"n_users": 80, "n_items": 200, "n_impressions": 20}
    root = run_pipeline(cfg, ["data"], log=lambda m: None, run_dir=tmp_path / "run")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name not in ("log.txt", ".lock")}
    real_replace = io.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(StorageError, match=r"cannot write \(No space left on device\); artifacts written before are intact") as err:
        run_pipeline(cfg, ["data", "popularity"], log=lambda m: None, run_dir=root)
    assert isinstance(err.value, UserError)
    monkeypatch.setattr(io.os, "replace", real_replace)
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name not in ("log.txt", ".lock")}
    assert {p: b for p, b in after.items() if p in before} == before
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


def test_an_unwritable_run_directory_fails_before_any_work(tmp_path, monkeypatch):
    import errno

    import thinkrec.pipeline.rundir as rundir
    from thinkrec.errors import StorageError
    from thinkrec.pipeline.config import RunConfig
    from thinkrec.pipeline.run import run_pipeline

    real_open = rundir.os.open

    def read_only(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(rundir.os, "open", read_only)
    with pytest.raises(StorageError, match="Read-only file system"):
        run_pipeline(RunConfig(), ["data"], log=lambda m: None, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()
