"""Every trainer resumes after SIGKILL to the result of an uninterrupted run: weights equal to the last byte and
the same history. The kill lands at a seeded random training step in the second half of the run, so at least one
checkpoint precedes it.

The LLM stage (alignment → SFT on target and reject traces → DAPO) checkpoints through transformers' Trainer
about every quarter of a phase and records each finished phase. DAPO takes one optimizer step per generation, so
its checkpoints fall on generation boundaries: TRL never has to regenerate a buffered batch after a resume, which
is what makes the resumed DAPO phase replay exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(trainer: str, work: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", "OMP_NUM_THREADS": "1"}
    env.pop("THINKREC_KILL_AT_STEP", None)
    if kill_at is not None:
        env["THINKREC_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "tests.resume.driver", trainer, str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("trainer", ["sasrec", "rqvae", "coba", "rerank", "llm"])
def test_killed_training_resumes_to_the_uninterrupted_result(trainer, tmp_path):
    full = _run(trainer, tmp_path / "full")
    assert full.returncode == 0, full.stderr
    expected = json.loads((tmp_path / "full" / "result.json").read_text())
    assert not expected["had_checkpoint"] and expected["steps"] > 4

    rng = np.random.default_rng(sum(map(ord, trainer)))  # seeded per trainer
    kill_at = int(rng.integers(expected["steps"] // 2, expected["steps"]))
    killed = _run(trainer, tmp_path / "resumed", kill_at)
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
    assert not (tmp_path / "resumed" / "result.json").exists()

    resumed = _run(trainer, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert got["had_checkpoint"], "the kill left no checkpoint to resume from"
    assert got["steps"] < expected["steps"], "the resumed run started over instead of resuming"
    assert got["history"] == expected["history"]
    assert got["digest"] == expected["digest"]
