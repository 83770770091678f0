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

from thinkrec.baselines.bsarec import BSARecConfig
from thinkrec.baselines.sasrec import SASRecConfig
from thinkrec.data.seen import DEFAULT_THRESHOLD, SEEN_POLICIES
from thinkrec.llm.stage import LLMStageConfig
from thinkrec.rerank.stage import RerankStageConfig
from thinkrec.retrieval.candidates import CandidateConfig
from thinkrec.retrieval.stage import RetrievalConfig
from thinkrec.tokenize.stage import TokenizeConfig
from thinkrec.utils.config import (
    ConfigError,
    device_error,
    dump_yaml,
    from_dict,
    non_empty,
    read_config_data,
    spec,
    split_error,
    to_dict,
    validate,
)

SPLITS = ("loo", "leave-one-out", "leave_one_out", "temporal", "global-temporal", "global_temporal")
#: Stages that only read what earlier invocations wrote (no data needed up front).
READ_ONLY_STAGES = ("evaluate", "report")


#: the ``stages:`` names, in funnel order (each maps to a group of graph nodes: thinkrec.pipeline.run)
STAGE_NAMES = ("data", "popularity", "sasrec", "tokenize", "retrieval", "candidates", "rerank", "llm", "evaluate", "report")


def _stage_names() -> tuple[str, ...]:
    return STAGE_NAMES



def _format_names() -> tuple[str, ...]:
    from thinkrec.data.registry import FORMATS

    return FORMATS.names()


def device_unavailable(device: str) -> str | None:
    """Why torch cannot use ``device`` here (None: it can); the name itself is checked by :func:`device_error`."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"CUDA is not available on this machine (got {device!r}); use cpu"
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s) (got {device!r})"
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "MPS is not available on this machine (got 'mps'); use cpu"
    return None


@dataclass
class RunSection:
    name: str = spec("default", check=non_empty)
    out_dir: str = spec("runs", check=non_empty)
    seed: int = spec(0, ge=0, le=2**32 - 1)  # numpy's global seed takes 0 … 2³² − 1
    device: str = spec("cpu", check=device_error)
    threads: int | None = spec(None, ge=1, le=4096)  # torch threads; None = torch's default


@dataclass
class DataSection:
    dataset: str = spec("synthetic", check=non_empty)
    data_root: str | None = spec(None, exists=True)
    format: str | None = spec(None, choices=_format_names)  # for a path: one of thinkrec.data.registry.FORMATS
    split: str = spec("loo", choices=SPLITS)  # loo | temporal
    valid_frac: float = spec(0.1, gt=0.0, lt=1.0)  # temporal split only
    test_frac: float = spec(0.1, gt=0.0, lt=1.0)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the loader / synthetic generator

    def _checks(self) -> list[tuple[str, str]]:
        out = []
        if self.split.startswith(("temporal", "global")) and self.valid_frac + self.test_frac >= 1:
            out.append(("valid_frac", f"valid_frac + test_frac must be below 1 (got {self.valid_frac} + {self.test_frac})"))
        if self.dataset == "synthetic" and self.format is None:  # the generator's own checks, on the options
            from thinkrec.data.synthetic import SyntheticConfig

            errors: list[str] = []
            from_dict(SyntheticConfig, self.options, "options", errors)
            out += [split_error(e) for e in errors]
        return out

    def _path_checks(self) -> list[tuple[str, str]]:
        """The dataset resolves as :func:`thinkrec.data.registry.load_dataset` would: a prepared folder, a named
        dataset or an existing path (with ``format``: a path, also under the data root)."""
        from thinkrec.data.registry import DATASETS, resolve_data_root

        path = Path(self.dataset).expanduser()
        if self.format is not None:
            if not path.exists() and not (not path.is_absolute() and (resolve_data_root(self.data_root) / path).exists()):
                return [("dataset", f"no such file or folder to load as {self.format!r} (got {self.dataset!r}; "
                                    f"looked here and under {resolve_data_root(self.data_root)})")]
            return []
        if path.exists() or self.dataset in DATASETS:
            return []
        return [("dataset", f"not a named dataset ({', '.join(DATASETS.names())}), a prepared folder or an existing "
                            f"path (got {self.dataset!r})")]


@dataclass
class EvalSection:
    ks: list[int] = spec(default_factory=lambda: [5, 10, 20], ge=1, min_len=1)
    # seen-item policy of every list, evaluated and served (thinkrec.data.seen): exclude | keep | auto (exclude when
    # the training split's repeat share is below seen_threshold)
    seen: str = spec("auto", choices=SEEN_POLICIES)
    seen_threshold: float = spec(DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    batch_size: int = spec(1024, ge=1)
    bootstrap: int = spec(1000, ge=1)  # resamples for confidence intervals


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    # BSARec (a SASRec variant, scorer `bsarec`): trained only when listed in candidates.sources
    bsarec: BSARecConfig = field(default_factory=BSARecConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rerank: RerankStageConfig = field(default_factory=RerankStageConfig)
    llm: LLMStageConfig = field(default_factory=LLMStageConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    # "llm" (stage 4, the GR2 LLM re-ranker) is opt-in: `thinkrec run --with-llm` or list it here
    stages: list[str] = spec(
        default_factory=lambda: ["data", "popularity", "sasrec", "tokenize", "retrieval", "candidates", "rerank", "evaluate",
                                 "report"], choices=_stage_names, min_len=1,
    )

    def _checks(self) -> list[tuple[str, str]]:
        """Combinations across sections."""
        from thinkrec.pipeline.scorers import candidate_sources

        out: list[tuple[str, str]] = []
        c = self.candidates
        if "candidates" in self.stages:
            sources = candidate_sources(self)
            unknown = sorted(set(c.quotas or {}) - set(sources))
            if unknown:
                out.append(("candidates.quotas", f"{', '.join(unknown)} not among the candidate sources {sources}"))
            elif sources:
                quotas = {s: 0.0 if s in c.fallback else 1.0 for s in sources} | {k: float(v) for k, v in (c.quotas or {}).items()}
                if not any(quotas.values()):
                    out.append(("candidates.quotas", f"every source of {sources} is a fallback (quota 0); at least one "
                                                     "needs a quota"))
        r = self.retrieval
        if "retrieval" in self.stages and not r.models:
            out.append(("retrieval.models", "the retrieval stage is listed but trains no model (list tiger and/or s2gr, "
                                            "or drop 'retrieval' from stages)"))
        pre = self.llm.pre_rank
        if pre not in ("funnel", "initial") and pre not in self.rerank.models:
            out.append(("llm.pre_rank", f"must be funnel, initial or one of rerank.models {self.rerank.models} "
                                        f"(got {pre!r})"))
        return out


# dotted field → the stage whose seed it takes (None: the field takes run.device)
DERIVED: dict[str, str | None] = {
    "sasrec.seed": "sasrec",
    "bsarec.seed": "bsarec",
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
    """Defaults ← YAML ← ``--set`` overrides, validated: unknown keys, wrong types, values out of range and
    impossible combinations are all listed in one :class:`ConfigError`; a derived field (``sasrec.seed``,
    ``llm.device``, …) is an error too."""
    data = read_config_data(path, overrides)
    where = str(path or "<defaults>")
    errors = []
    for dotted, stage in DERIVED.items():
        node: Any = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and leaf in node:
            what = "run.device (every stage uses it)" if stage is None else "run.seed (every stage derives its own from it)"
            errors.append(f"{dotted}: set {what} instead")
            node.pop(leaf)
    config = from_dict(RunConfig, data, errors=errors)
    errors += validate(config)
    if errors:
        raise ConfigError(errors, where)
    return config


def check_run_config(config: RunConfig, stages: list[str] | None = None, source: str | None = None) -> RunConfig:
    """Everything :func:`load_run_config` checks, on a config built in code, plus that ``run.device`` exists on
    this machine and (when ``stages`` do work beyond evaluating and reporting) the paths that must exist; one
    :class:`ConfigError` lists every error."""
    wanted = list(stages or config.stages)
    errors = validate(config, paths=any(s not in READ_ONLY_STAGES for s in wanted))
    if device_error(config.run.device) is None and (problem := device_unavailable(config.run.device)):
        errors.append(f"run.device: {problem}")
    unknown = [s for s in wanted if s not in _stage_names()]
    if unknown:
        errors.append(f"stages: unknown stage(s) {unknown}; known: {', '.join(_stage_names())}")
    if errors:
        raise ConfigError(errors, source)
    return config
