"""The LLM stage on the tiny fixtures, run by path like the pipeline runs it: ``python -m tests.llm.stage_worker OUT
BASE [CHECKPOINTS]`` (one process, or each rank of a ``torchrun`` launch). ``BASE`` is a checkpoint from
:func:`tests.llm.fixtures.save_tiny_llm`."""

from __future__ import annotations

import sys

import numpy as np

from tests.llm import fixtures
from thinkrec.llm.model import LoraSettings
from thinkrec.llm.prompts import Catalogue
from thinkrec.llm.stage import LLMStageConfig, TeacherSettings, run_llm_stage
from thinkrec.llm.train import DAPOSettings, SFTSettings
from thinkrec.rerank.lists import RerankLists


def data() -> tuple[Catalogue, RerankLists, RerankLists, list[np.ndarray]]:
    """Catalogue, training lists, test lists, training sequences."""
    return fixtures.catalogue(), fixtures.lists(40, seed=1), fixtures.lists(20, seed=2), [np.arange(10)]


def config(base: str) -> LLMStageConfig:
    """A tiny budget; reject sampling at temperature 1 with two tries draws from the teacher's per-request seeds."""
    return LLMStageConfig(
        model=base, max_reasoning_tokens=6, n_history=3,
        lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        alignment=SFTSettings(steps=2, batch_size=4, lr=1e-3, max_len=256),
        teacher=TeacherSettings(kind="programmatic", temperature=1.0, max_tries=2),
        sampling=["target", "reject"], n_train_requests=12,
        sft=SFTSettings(steps=2, batch_size=2, lr=1e-3, max_len=384),
        rl=DAPOSettings(steps=1, prompts_per_step=1, num_generations=4, max_reasoning_tokens=6),
        n_eval=6, eval_batch_size=2,
    )


def main(out: str, base: str, checkpoints: str | None = None) -> None:
    cat, train, test, sequences = data()
    run_llm_stage(cat, train, test, sequences, config(base), out, log=print, checkpoint_dir=checkpoints)


if __name__ == "__main__":
    main(*sys.argv[1:4])
