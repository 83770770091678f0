"""The full run configuration: one section per funnel stage, loaded from configs/*.yaml + overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinkrec.baselines.sasrec import SASRecConfig
from thinkrec.llm.stage import LLMStageConfig
from thinkrec.rerank.stage import RerankStageConfig
from thinkrec.retrieval.stage import RetrievalConfig
from thinkrec.tokenize.stage import TokenizeConfig


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
    format: str | None = None  # for a path: s3rec, lcrec, recbole, movielens, mind, csv, parquet, amazon, prepared
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
    rerank: RerankStageConfig = field(default_factory=RerankStageConfig)
    llm: LLMStageConfig = field(default_factory=LLMStageConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    # "llm" (stage 4, the GR2 LLM re-ranker) is opt-in: `thinkrec run --with-llm` or list it here
    stages: list[str] = field(
        default_factory=lambda: ["data", "popularity", "sasrec", "tokenize", "retrieval", "rerank", "evaluate", "report"]
    )
