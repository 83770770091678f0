"""The LLM stage under ``torchrun`` with 2 CPU processes (gloo): one set of artifacts, written by rank 0; traces
sampled in shards that add up to what one process samples; evaluation sharded and equal to one process's; phase
records written once and resumed by both ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")

from tests.llm import fixtures, stage_worker  # noqa: E402
from thinkrec.llm import parallel  # noqa: E402
from thinkrec.llm.answer import AnswerTokens  # noqa: E402
from thinkrec.llm.model import load_adapter  # noqa: E402
from thinkrec.llm.stage import evaluate, select_requests  # noqa: E402
from thinkrec.llm.train import drop_uninformative_groups  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(out: Path, base: str, procs: int, checkpoints: Path | None = None) -> str:
    """Run the stage (``tests.llm.stage_worker``) in ``procs`` processes; returns what they printed."""
    worker = ["-m", "tests.llm.stage_worker", str(out), base, *([str(checkpoints)] if checkpoints else [])]
    launch = [] if procs == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                                    "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *launch, *worker], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "created"} for line in path.read_text().splitlines()]


def test_shares_are_contiguous_and_cover_everything_once():
    assert [parallel.bounds(3, r, 2) for r in range(2)] == [(0, 1), (1, 3)]
    assert [parallel.bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert parallel.bounds(0, 1, 2) == (0, 0) and parallel.bounds(5, 0, 1) == (0, 5)


def test_dynamic_sampling_judges_a_group_split_over_processes_as_a_whole():
    # one group of 4 completions, rows 0-1 on rank 0 (advantages 0) and rows 2-3 on rank 1; then an all-equal group
    everyone = torch.tensor([0.0, 0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
    for at, expected in ((0, [1, 1]), (1, [1, 1]), (2, [0, 0]), (3, [0, 0])):
        mask, kept = drop_uninformative_groups(everyone, torch.ones(2, 3, dtype=torch.long), 4,
                                               slice(2 * at, 2 * at + 2))
        assert mask[:, 0].tolist() == expected and kept == 0.5


def test_two_processes_write_one_set_of_artifacts_equal_to_one_process(tmp_path):
    base = fixtures.save_tiny_llm(tmp_path / "base")
    cfg = stage_worker.config(base)
    two, one, ck = tmp_path / "two", tmp_path / "one", tmp_path / "checkpoints"
    printed = _stage(two, base, 2, ck)
    _stage(one, base, 1)

    # one set of artifacts: no per-rank copies, no part or temporary files left; rank 0 alone logged
    files = sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("adapter/")] == ["metrics.json", "traces_reject.jsonl",
                                                                   "traces_target.jsonl"]
    assert "adapter/adapter_model.safetensors" in files
    assert files == sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert printed.count("LLM: ") == 1 and printed.count("traces (reject") == 1

    # traces: every training list sampled exactly once over the two shards, the same traces one process samples
    # (the programmatic teacher's reject sampling draws from per-list seeds)
    n_lists = len(select_requests(stage_worker.data()[1], cfg.n_train_requests, cfg.seed + 1, True, "train:",
                                   cfg.max_candidates))
    for mode in ("target", "reject"):
        rows = _rows(two / f"traces_{mode}.jsonl")
        assert len(rows) == n_lists == len({r["request_id"] for r in rows})
        assert rows == _rows(one / f"traces_{mode}.jsonl")
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert m2["processes"] == 2 and m1["processes"] == 1
    reject = m2["traces"]["reject"]
    assert reject["tries"] > reject["accepted"] > 0  # some lists needed a second sample
    assert {k: v for k, v in reject.items() if k != "wall_s"} == {k: v for k, v in m1["traces"]["reject"].items()
                                                                    if k != "wall_s"}

    # data-parallel SFT sees the same global batches as one process: the same losses up to float rounding
    for phase in (m2["logs"]["alignment"], *m2["logs"]["sft"].values()):
        assert any("loss" in r for r in phase)
    for a, b in zip([m2["logs"]["alignment"], *m2["logs"]["sft"].values()],
                    [m1["logs"]["alignment"], *m1["logs"]["sft"].values()], strict=True):
        assert [r["loss"] for r in a if "loss" in r] == pytest.approx([r["loss"] for r in b if "loss" in r], rel=1e-4)

    # the sharded evaluation of the final model equals one process evaluating the saved adapter
    cat, _, test, _ = stage_worker.data()
    model, tok = load_adapter(base, two / "adapter", cat.radix)
    eval_reqs = select_requests(test, cfg.n_eval, cfg.seed, True, "test:", cfg.max_candidates)
    assert -(-len(eval_reqs) // cfg.eval_batch_size) == 3  # 3 batches: shares of 1 and 2, uneven on purpose
    alone = evaluate(model, AnswerTokens(tok), cat, eval_reqs, cfg)
    sharded = m2["metrics"]["rl"]
    for key in ("ranks", "recall@1", "recall@5", "ndcg@5", "malformed", "n", "examples"):
        assert sharded[key] == alone[key], key
    assert sharded["n"] == len(eval_reqs) == cfg.n_eval

    # one record per phase (rank 0's); a second launch loads them on both ranks and redoes nothing
    phases = ["alignment", "rl", "sft-reject", "sft-target"]
    assert sorted(p.name for p in ck.glob("phase-*")) == [f"phase-{p}" for p in phases]
    traces = {m: (two / f"traces_{m}.jsonl").read_text() for m in ("target", "reject")}
    again = _stage(two, base, 2, ck)
    assert again.count("finished earlier") == len(phases) and "step 1/" not in again
    assert traces == {m: (two / f"traces_{m}.jsonl").read_text() for m in ("target", "reject")}
    resumed = json.loads((two / "metrics.json").read_text())
    assert all(resumed["metrics"][p] == m2["metrics"][p] for p in phases)
