"""The full run configuration: one section per funnel stage, loaded from configs/*.yaml + overrides.

``run.seed`` and ``run.device`` are the only seed and device a user sets: :func:`resolve` derives every stage's
own seed from ``run.seed`` (a hash of the seed and the stage's name, so stages draw independent streams) and
gives every stage ``run.device``. The sections' own ``seed`` / ``device`` fields exist for library use; a config
file that sets them is refused (:data:`DERIVED`).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkrec.baselines.sasrec import SASRecConfig
from thinkrec.llm.stage import LLMStageConfig
from thinkrec.rerank.stage import RerankStageConfig
from thinkrec.retrieval.candidates import CandidateConfig
from thinkrec.retrieval.stage import RetrievalConfig
from thinkrec.tokenize.stage import TokenizeConfig
from thinkrec.utils.config import ConfigError, dump_yaml, from_dict, read_config_data, to_dict


@dataclass
class RunSection:
    name: str = "default"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch threads; None = torch's default


@dataclass
class DataSection:
    dataset: str = "synthetic"
    data_root: str | None = None
    format: str | None = None  # for a path: one of thinkrec.data.registry.FORMATS (`thinkrec models`)
    split: str = "loo"  # loo | temporal
    valid_frac: float = 0.1  # temporal split only
    test_frac: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)  # passed to the loader / synthetic generator


@dataclass
class EvalSection:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    mask_history: bool = False
    batch_size: int = 1024
    bootstrap: int = 1000  # resamples for confidence intervals


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rerank: RerankStageConfig = field(default_factory=RerankStageConfig)
    llm: LLMStageConfig = field(default_factory=LLMStageConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    # "llm" (stage 4, the GR2 LLM re-ranker) is opt-in: `thinkrec run --with-llm` or list it here
    stages: list[str] = field(
        default_factory=lambda: ["data", "popularity", "sasrec", "tokenize", "retrieval", "candidates", "rerank", "evaluate",
                                 "report"]
    )


# dotted field → the stage whose seed it takes (None: the field takes run.device)
DERIVED: dict[str, str | None] = {
    "sasrec.seed": "sasrec",
    "tokenize.seed": "sids",
    "tokenize.device": None,
    "retrieval.train.seed": "retrieval",
    "rerank.train.seed": "rerank",
    "llm.seed": "llm",
    "llm.device": None,
    "llm.alignment.seed": "llm/alignment",
    "llm.sft.seed": "llm/sft",
    "llm.rl.seed": "llm/rl",
}


def stage_seed(run_seed: int, stage: str) -> int:
    """The seed stage ``stage`` uses: a hash of ``run.seed`` and the stage's name (31 bits)."""
    return int(hashlib.sha256(f"{run_seed}/{stage}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _walk(obj: Any, dotted: str) -> tuple[Any, str]:
    *parents, leaf = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    return obj, leaf


def resolve(config: RunConfig) -> RunConfig:
    """A copy with every stage's seed derived from ``run.seed`` and every device set to ``run.device``."""
    out = copy.deepcopy(config)
    for dotted, stage in DERIVED.items():
        owner, leaf = _walk(out, dotted)
        setattr(owner, leaf, out.run.device if stage is None else stage_seed(out.run.seed, stage))
    return out


def user_dict(config: RunConfig) -> dict[str, Any]:
    """The config as a user writes it: without the fields :func:`resolve` derives."""
    data = to_dict(config)
    for dotted in DERIVED:
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return data


def dump_run_config(config: RunConfig) -> str:
    return dump_yaml(user_dict(config))


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML ← ``--set`` overrides; a derived field (``sasrec.seed``, ``llm.device``, …) is an error."""
    data = read_config_data(path, overrides)
    where = str(path or "<defaults>")
    for dotted, stage in DERIVED.items():
        node: Any = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and leaf in node:
            what = "run.device (every stage uses it)" if stage is None else "run.seed (every stage derives its own from it)"
            raise ConfigError(f"{where}: {dotted}: set {what} instead")
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
