"""Trains one small model with checkpoints on; the resume tests run it in a subprocess, SIGKILL it at a seeded
step (``THINKREC_KILL_AT_STEP``: a hook in :data:`thinkrec.utils.faults.STEP_HOOKS` kills the process at the N-th
training step it reaches, counted over every trainer), run it again and compare with an uninterrupted run.

    python -m tests.resume.driver TRAINER WORKDIR

Writes ``WORKDIR/result.json``: a digest of the final weights (every byte), the history without wall times, the
number of training steps taken and whether a checkpoint was there to resume from.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _clean(history: list[dict]) -> list[dict]:
    """History rows without wall-clock fields (the only thing that may differ between runs)."""
    drop = ("train_s", "eval_s", "seconds", "samples_per_s", "spent", "lists_per_s")
    return [{k: v for k, v in row.items() if k not in drop} for row in history]


def _sasrec(ck: Path) -> tuple[dict, list]:
    from tests.baselines.test_sasrec import _planted
    from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec
    from thinkrec.data.splits import leave_one_out

    cfg = SASRecConfig(d_model=16, n_layers=1, n_heads=2, dropout=0.2, max_len=10, lr=5e-3, batch_size=32, epochs=5,
                       patience=5, warmup_steps=5, loss="sampled", negatives=8)
    model, hist = train_sasrec(leave_one_out(_planted(n_users=150)), cfg, log=lambda m: None, checkpoint_dir=ck)
    return model.state_dict(), hist


def _quantizer(method: str, ck: Path) -> tuple[dict, list]:
    from tests.tokenize.test_quantizers import _sequences, planted
    from thinkrec.tokenize.coba import CoBa
    from thinkrec.tokenize.rqvae import RQVAE

    x = planted(n=400, d=16, k=8)
    kw = dict(n_levels=2, codebook_size=8, epochs=6, batch_size=64, hidden_dims=[32], code_dim=8, seed=3, log_every=1,
              num_threads=1, dead_code_reset=True, dead_code_steps=2)
    if method == "coba":
        q = CoBa(**kw, collaborative=True)
        ctx = _sequences(400)
    else:
        from thinkrec.tokenize.base import FitContext

        q, ctx = RQVAE(**kw, diversity_loss=True, diversity_clusters=2, diversity_recluster_every=3), FitContext()
    ctx.checkpoint_dir = ck
    codes = q.fit_encode(x, ctx)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in q._tensors().items()}
    state["codes"] = torch.from_numpy(codes)
    return state, q.history


def _rerank(ck: Path) -> tuple[dict, list]:
    from thinkrec.data.synthetic import SyntheticConfig, generate
    from thinkrec.rerank import (
        RerankModelConfig,
        RerankTrainConfig,
        impression_lists,
        temporal_thirds,
        train_evaluator,
        train_reranker,
    )

    lists, _ = impression_lists(generate(SyntheticConfig(n_users=120, n_items=100, n_impressions=240, seed=3)))
    tr, va, _ = temporal_thirds(lists)
    cfg = RerankModelConfig(d_model=16, dropout=0.1)
    tc = RerankTrainConfig(epochs=3, patience=3, evaluator_epochs=3, rl_epochs=2, rollouts=4, batch_size=16,
                           rl_batch_requests=16)
    ev, ev_hist = train_evaluator(tr, va, cfg, tc, log=lambda m: None, checkpoint_dir=ck / "evaluator")
    model, hist = train_reranker("eglr", tr, va, cfg, tc, evaluator=ev, log=lambda m: None, checkpoint_dir=ck / "eglr")
    state = {f"evaluator.{k}": v for k, v in ev.state_dict().items()} | {f"eglr.{k}": v for k, v in model.state_dict().items()}
    return state, ev_hist + hist


def _llm(ck: Path) -> tuple[dict, list]:
    """The whole GR2 stage (alignment, SFT on target and reject traces, DAPO) on a tiny random Qwen3."""
    from tests.llm import fixtures
    from thinkrec.llm.stage import LLMStageConfig, LoraSettings, run_llm_stage
    from thinkrec.llm.train import DAPOSettings, SFTSettings

    cat = fixtures.catalogue()
    train, test = fixtures.lists(40, seed=1), fixtures.lists(20, seed=2)
    tok = fixtures.tokenizer(cat, train)
    model = fixtures.qwen3(len(tok), seed=0)
    cfg = LLMStageConfig(
        model="tiny-qwen3", max_reasoning_tokens=6, n_history=3,
        lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        alignment=SFTSettings(steps=6, batch_size=4, lr=1e-3, max_len=256),
        sampling=["target", "reject"], n_train_requests=16,
        sft=SFTSettings(steps=4, batch_size=2, lr=1e-3, max_len=384),
        rl=DAPOSettings(steps=4, prompts_per_step=1, num_generations=4, max_reasoning_tokens=6),
        n_eval=6, eval_batch_size=3,
    )
    summary = run_llm_stage(cat, train, test, [np.arange(10)], cfg, ck.parent / "llm", model, tok,
                            log=lambda *_: None, checkpoint_dir=ck)
    state = {k: v for k, v in model.named_parameters() if v.requires_grad}
    history = [{"phase": name, **{k: v for k, v in m.items() if k != "wall_s"}} for name, m in summary["metrics"].items()]
    history += [{"phase": phase, "loss": r.get("loss")} for phase in ("alignment", "rl")
                for r in summary["logs"][phase] if "loss" in r]
    return state, history


TRAINERS = {"sasrec": _sasrec, "rqvae": lambda ck: _quantizer("rqvae", ck), "coba": lambda ck: _quantizer("coba", ck),
            "rerank": _rerank, "llm": _llm}


_steps = 0


def _count_and_kill() -> None:
    """The fault injector: SIGKILL at the ``THINKREC_KILL_AT_STEP``-th training step, as ``kill -9`` would."""
    global _steps
    _steps += 1
    kill_at = int(os.environ.get("THINKREC_KILL_AT_STEP", "0") or 0)
    if kill_at and _steps >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def main(trainer: str, workdir: str) -> None:
    from thinkrec.utils import faults

    faults.STEP_HOOKS.append(_count_and_kill)
    torch.set_num_threads(1)
    work = Path(workdir)
    ck = work / "checkpoints"
    had = any(ck.rglob("state.json")) if ck.exists() else False
    state, history = TRAINERS[trainer](ck)
    if os.environ.get("THINKREC_RESUME_DUMP"):  # debugging a mismatch: the final weights themselves
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(work / "state.safetensors"))
    (work / "result.json").write_text(json.dumps({
        "digest": _digest(state), "history": _clean(history), "steps": _steps, "had_checkpoint": had,
    }, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
