"""What the data must hold for the stages a run asks for, checked right after the data stage loads it — before any
model trains (a catalogue without item text used to be found only after SASRec had trained, when the Semantic
IDs were built).

:func:`data_problems` lists every problem (each naming the dataset, what is missing and the stage or config field
that needs it); :func:`check_data` raises them as one :class:`~thinkrec.errors.DataRequirementError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import SequenceSplit
from thinkrec.errors import DataRequirementError

#: Stages that train on the training sequences and stop early on the validation examples.
_TRAINING = ("popularity", "sasrec", "retrieval", "candidates")


def needs_sids(config: Any, stages: Iterable[str]) -> bool:
    """Whether the requested stages build (or read) Semantic IDs, hence item content vectors."""
    from thinkrec.pipeline.scorers import SCORERS, candidate_sources

    stages = set(stages)
    if stages & {"tokenize", "retrieval", "llm"}:
        return True
    if "candidates" in stages and any(SCORERS.get(n).needs_sids for n in candidate_sources(config) if n in SCORERS):
        return True
    # re-ranking lists use the item vectors as candidate features when the run builds Semantic IDs
    return "rerank" in stages and "tokenize" in config.stages


def data_problems(dataset: Dataset, config: Any, stages: Iterable[str], split: SequenceSplit | None = None) -> list[str]:
    """Every reason the requested ``stages`` cannot run on ``dataset`` under ``config`` (empty: none found)."""
    from thinkrec.pipeline.split import split_of

    stages = list(stages)
    name = dataset.name
    out: list[str] = []
    if split is None:
        split = split_of(dataset, config)
    d = config.data
    how = f"data.split={d.split}" + (f", valid_frac={d.valid_frac}, test_frac={d.test_frac}"
                                     if d.split.startswith(("temporal", "global")) else "")
    learning = [s for s in stages if s in (*_TRAINING, "rerank", "llm")]
    if learning and split.train_items.size == 0:
        out.append(f"dataset {name!r}: no training interactions under {how} (needed by {', '.join(learning)})")
    if learning and len(split.valid) == 0:
        out.append(f"dataset {name!r}: no validation examples under {how} — no user has enough interactions "
                   f"(loo needs users with ≥ 3; needed by {', '.join(learning)} for early stopping and re-ranking lists)")
    if (learning or "evaluate" in stages) and len(split.test) == 0:
        out.append(f"dataset {name!r}: no test examples under {how} (needed by evaluation)")
    if needs_sids(config, stages):
        out += _sid_problems(dataset, config)
    if "rerank" in stages or "llm" in stages:
        out += _impression_problems(dataset, config)
    return out


def _sid_problems(dataset: Dataset, config: Any) -> list[str]:
    from thinkrec.tokenize.embed import content_error
    from thinkrec.tokenize.quantizers import canonical_method, make_config
    from thinkrec.tokenize.stage import embed_config

    t = config.tokenize
    out = []
    problem = content_error(dataset, embed_config(t))
    if problem is not None:
        out.append(f"{problem} (needed by the Semantic IDs: stages tokenize / retrieval / llm)")
    method = canonical_method(t.method)
    q = make_config(method, {"seed": t.seed, "device": t.device, **t.quantizer})
    k, levels, n = int(q.codebook_size), int(q.n_levels), dataset.n_items
    if (method.startswith("rqkmeans") or getattr(q, "kmeans_init", False)) and n < k:
        out.append(f"dataset {dataset.name!r}: {n} items, fewer than the {k} codes per level of {method} "
                   f"(tokenize.quantizer.codebook_size): k-means needs an item per code — lower codebook_size")
    if t.collision == "reassign" and n > k ** levels:
        out.append(f"dataset {dataset.name!r}: {n} items do not fit into {k}^{levels} = {k ** levels} Semantic IDs "
                   "(tokenize.collision=reassign); use collision dedup or larger codebooks")
    return out


def _impression_problems(dataset: Dataset, config: Any) -> list[str]:
    r = config.rerank
    imps = dataset.impressions
    has = imps is not None and imps.height > 0
    if r.source == "impressions" and not has:
        return [f"dataset {dataset.name!r} has no logged impressions (rerank.source=impressions); use "
                "rerank.source=funnel (or auto) to re-rank the retrievers' lists"]
    if not has or r.source == "funnel":
        return []
    out = []
    if imps.height < 3:
        out.append(f"dataset {dataset.name!r}: {imps.height} impression(s); the re-rankers split them by time into "
                   "train / valid / test and need at least 3 (or set rerank.source=funnel)")
    clicks = imps["clicks"].list.sum().sum()
    if not clicks or (isinstance(clicks, float) and math.isnan(clicks)):
        out.append(f"dataset {dataset.name!r}: no impression has a click, so the re-rankers and the list evaluator "
                   "have nothing to learn (or set rerank.source=funnel)")
    return out


def check_data(dataset: Dataset, config: Any, stages: Iterable[str], split: SequenceSplit | None = None) -> None:
    """Raise one :class:`~thinkrec.errors.DataRequirementError` listing every :func:`data_problems` found."""
    problems = data_problems(dataset, config, stages, split)
    if len(problems) == 1:
        raise DataRequirementError(problems[0])
    if problems:
        raise DataRequirementError(f"dataset {dataset.name!r} lacks what the requested stages need:\n"
                                   + "\n".join(f"  {p}" for p in problems))
