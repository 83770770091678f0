"""Data-parallel training under ``torchrun`` with 2 CPU processes (gloo) against one process on the combined batch.

With dropout 0 every trainer's loss is a target-weighted mean that DDP's gradient average reproduces exactly, so the
launch must follow the single process step by step: the same whole-batch loss after every optimiser step (to float
rounding: the two ranks sum their halves in another order), the same validation history, final weights equal on
both ranks and equal to one process's, and one set of checkpoints (rank 0 writes). Then the pipeline itself under
``torchrun``: one run directory, as one process writes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.pipeline.test_run import TINY
from thinkrec.utils import distributed as dist

ROOT = Path(__file__).resolve().parents[2]
TRAINERS = ("sasrec", "retriever", "evaluator", "eglr", "prm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(procs: int, *args: str, timeout: int = 300) -> str:
    launch = [] if procs == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                                    "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *launch, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    _launch(1, "-m", "tests.distributed.driver", str(one))
    _launch(2, "-m", "tests.distributed.driver", str(two))
    return one, two


def _steps(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}" / "steps.json").read_text())


def test_helpers_are_identities_in_one_process():
    assert dist.world() == (0, 1) and not dist.active() and dist.is_main()
    assert dist.batch_slice(7) == slice(0, 7) and dist.share(3, 0) == [1.0, 1.0]
    assert dist.broadcast({"a": 1}) == {"a": 1}
    parts = {"x": np.arange(3)}
    assert dist.gather_arrays(parts) is parts
    # contiguous slices in rank order cover every index once, for any size
    for n in (0, 1, 5, 24):
        for size in (1, 2, 3):
            covered = np.concatenate([np.arange(*dist.bounds(n, r, size)) for r in range(size)])
            assert covered.tolist() == list(range(n))


def test_two_processes_follow_one_process_step_by_step(trained):
    one, two = trained
    single, rank0, rank1 = _steps(one, 0), _steps(two, 0), _steps(two, 1)
    for t in TRAINERS:
        a = np.array([s["loss"] for s in single[t]["steps"]])
        b = np.array([s["loss"] for s in rank0[t]["steps"]])
        assert len(a) == len(b) > 0, t
        # the whole batch's loss after each step: float rounding apart (measured ≤ 1.5e-5)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=t)
        assert rank0[t] == rank1[t], t  # every rank reports the same (all-reduced) numbers and history
        for h1, h2 in zip(single[t]["history"], rank0[t]["history"], strict=True):
            assert h1.keys() == h2.keys()
            for k, v in h1.items():
                if isinstance(v, float):
                    assert v == pytest.approx(h2[k], rel=1e-3, abs=1e-4), (t, k)
                else:
                    assert v == h2[k], (t, k)


def test_ranks_end_with_identical_weights_equal_to_one_process(trained):
    one, two = trained
    w1 = load_file(str(one / "rank0" / "weights.safetensors"))
    r0, r1 = (load_file(str(two / f"rank{r}" / "weights.safetensors")) for r in (0, 1))
    assert w1.keys() == r0.keys() == r1.keys()
    for k in w1:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)  # DDP keeps the replicas bit-identical
        # the same trajectory, float rounding apart; RL (eglr) and 6 epochs of Adam amplify it most (measured 8e-4)
        np.testing.assert_allclose(r0[k], w1[k], atol=3e-3, rtol=0, err_msg=k)


def test_rank_zero_alone_writes_checkpoints(trained):
    _, two = trained
    assert (two / "probe0").exists() and not (two / "probe1").exists()
    assert sorted(p.name for p in (two / "ckpt").iterdir()) == sorted(TRAINERS)
    leftovers = [p for p in two.rglob("*") if ".tmp" in p.name or ".part" in p.name]
    assert not leftovers, leftovers


def _run_dir(procs: int, out: Path) -> Path:
    args = ["-m", "thinkrec.cli", "run", "--config", "configs/synthetic.yaml", "--name", "t",
            "--set", f"run.out_dir={out}", "--set", "run.threads=1", "--set", "retrieval.models=[s2gr]",
            "--set", "rerank.models=[initial,eglr]", "--set", "sasrec.dropout=0.0"]
    for s in TINY:
        args += ["--set", s]
    _launch(procs, *args, timeout=600)
    return out / "t"


def test_pipeline_under_torchrun_writes_one_run_directory(tmp_path):
    one, two = _run_dir(1, tmp_path / "one"), _run_dir(2, tmp_path / "two")
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    # rank 0 logs: every line once (a second rank would double the stage lines)
    lines = [line.split(" ", 2)[-1] for line in (two / "log.txt").read_text().splitlines()]
    assert sum("sasrec: epoch 1" in line for line in lines) == 1
    # SASRec trained data-parallel (dropout 0): the one-process weights, float rounding apart
    w1, w2 = (load_file(str(d / "sasrec" / "model.safetensors")) for d in (one, two))
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], atol=1e-3, rtol=0, err_msg=k)
    m1, m2 = (json.loads((d / "metrics.json").read_text())["test"] for d in (one, two))
    assert m1.keys() == m2.keys()
    assert m2["sasrec"]["metrics"]["ndcg@10"] == pytest.approx(m1["sasrec"]["metrics"]["ndcg@10"], abs=0.02)


def test_sparse_item_gradients_are_all_reduced(tmp_path):
    out = tmp_path / "sparse.json"
    _launch(2, "-m", "tests.distributed.sparse_worker", str(out))
    got = json.loads(out.read_text())
    assert got["sparse"] and got["equal"], got  # the replicas stay identical: every rank applied the same update
    assert len(got["valid_ndcg@10"]) == 2
