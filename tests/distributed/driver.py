"""Trains every data-parallel trainer on tiny data and records what the DDP tests compare.

    torchrun --nproc_per_node 2 -m tests.distributed.driver OUT    (one process: ``run(OUT)``)

Each rank writes ``OUT/rank<r>/weights.safetensors`` (every trainer's final weights, keys ``<trainer>/<name>``) and
``OUT/rank<r>/steps.json`` (per trainer, the whole batch's loss after each optimiser step, and the history). Trainer
checkpoints go to ``OUT/ckpt/<trainer>`` (one folder for every rank, as in a real launch); ``OUT/probe<r>`` is
where each rank asks a :class:`Checkpointer` to write (only rank 0's may appear). Dropout is 0 throughout: the
ranks' dropout masks are their own, so only without dropout does a launch follow one process step by step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

QUIET = lambda m: None  # noqa: E731


def _sasrec(out: Path, steps: list) -> tuple[dict, list]:
    from tests.baselines.test_sasrec import _planted
    from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec
    from thinkrec.data.splits import leave_one_out

    cfg = SASRecConfig(d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_len=10, lr=5e-3, batch_size=24, epochs=2,
                       patience=5, warmup_steps=2)  # the default loss: full-softmax CE
    model, hist = train_sasrec(leave_one_out(_planted(n_users=120)), cfg, log=QUIET, checkpoint_dir=out / "sasrec",
                               on_step=steps.append)
    return model.state_dict(), hist


def _retriever(out: Path, steps: list) -> tuple[dict, list]:
    from tests.retrieval.fixtures import planted_dataset, random_sids
    from thinkrec.data.splits import leave_one_out
    from thinkrec.retrieval import RetrieverConfig, RetrieverTrainConfig, train_retriever
    from thinkrec.retrieval.clusters import code_clusters

    ds = planted_dataset(n_users=80)
    sm, books = random_sids(ds)
    # S²GR's thinking tokens with the alignment loss (a mean over targets); its InfoNCE term (aux_decoder) is not
    # decomposable over ranks and stays off here
    mcfg = RetrieverConfig(d_model=16, n_enc_layers=1, n_dec_layers=1, n_heads=2, ffn=32, dropout=0.0, max_len=10,
                           thinking=True, n_clusters=2, aux_decoder=False)
    tcfg = RetrieverTrainConfig(lr=3e-3, batch_size=16, epochs=2, patience=5, warmup_steps=2, eval_beam=4)
    model, hist = train_retriever(leave_one_out(ds), sm, mcfg, tcfg, code_clusters=code_clusters(books, sm.radix, 2),
                                  checkpoint_dir=out / "retriever", log=QUIET, on_step=steps.append)
    return model.state_dict(), hist


def _rerankers(out: Path, steps: dict[str, list]) -> dict[str, tuple[dict, list]]:
    from thinkrec.data.synthetic import SyntheticConfig, generate
    from thinkrec.rerank import (
        RerankModelConfig,
        RerankTrainConfig,
        impression_lists,
        temporal_thirds,
        train_evaluator,
        train_reranker,
    )

    lists, _ = impression_lists(generate(SyntheticConfig(n_users=150, n_items=100, n_impressions=200, seed=3)))
    train, valid, _ = temporal_thirds(lists, valid_frac=0.2)
    cfg = RerankModelConfig(d_model=16, dropout=0.0, max_decode=5)
    tc = RerankTrainConfig(batch_size=50, epochs=2, evaluator_epochs=2, patience=5, rl_epochs=1, rollouts=3,
                           rl_batch_requests=40)
    ev, ev_hist = train_evaluator(train, valid, cfg, tc, log=QUIET, checkpoint_dir=out / "evaluator",
                                  on_step=steps["evaluator"].append)
    result = {"evaluator": (ev.state_dict(), ev_hist)}
    for name in ("eglr", "prm"):  # the pointer generator (supervised, then RL) and a listwise scorer
        model, hist = train_reranker(name, train, valid, cfg, tc, evaluator=ev, log=QUIET,
                                     checkpoint_dir=out / name, on_step=steps[name].append)
        result[name] = (model.state_dict(), hist)
    return result


def _clean(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in history]


def run(out: Path) -> None:
    from thinkrec.utils import distributed as dist
    from thinkrec.utils.checkpoint import Checkpointer

    torch.set_num_threads(1)
    rank = dist.rank()
    steps: dict[str, list] = {k: [] for k in ("sasrec", "retriever", "evaluator", "eglr", "prm")}
    results: dict[str, tuple[dict, list]] = {"sasrec": _sasrec(out / "ckpt", steps["sasrec"]),
                                             "retriever": _retriever(out / "ckpt", steps["retriever"])}
    results.update(_rerankers(out / "ckpt", steps))
    Checkpointer(out / f"probe{rank}", "probe").save({"rank": rank})
    mine = out / f"rank{rank}"
    mine.mkdir(parents=True, exist_ok=True)
    weights: dict[str, Any] = {f"{t}/{k}": v.detach().clone().contiguous() for t, (state, _) in results.items()
                               for k, v in state.items()}
    save_file(weights, str(mine / "weights.safetensors"))
    record = {t: {"steps": steps[t], "history": _clean(h)} for t, (_, h) in results.items()}
    (mine / "steps.json").write_text(json.dumps(record))


if __name__ == "__main__":
    from thinkrec.utils.distributed import process_group

    with process_group():
        run(Path(sys.argv[1]))
