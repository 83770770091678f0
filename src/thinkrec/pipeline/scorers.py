"""The next-item scorer registry: every model that ranks the whole catalogue (or returns its top-K) for a history.

Each entry says which ``stages:`` entry trains it, where its folder lives in a run directory, the config it is
trained from and how it trains and loads. A folder loads on its own (``spec.load(folder, device)``): the
pipeline's evaluation, :func:`thinkrec.load` and serving all load scorers this way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkrec.pipeline.split import split_inputs
from thinkrec.utils import distributed as dist
from thinkrec.utils.registry import Registry


@dataclass(frozen=True)
class ScorerSpec:
    stage: str  # the `stages:` entry that trains it
    folder: Callable[[str], str]  # name → folder relative to the run directory
    inputs: Callable[[Any, str], Any]  # (resolved RunConfig, name) → the config it trains from
    needs_sids: bool
    train: Callable[[Any, str, Path], dict[str, Any]]  # (Context, name, folder) → summary
    load: Callable[[Path, str], Any]  # (folder, device) → scorer with .score(users, tokens) [and .recommend]
    generative: bool = False  # returns beams (top-K), not a full ranking
    distributed: bool = False  # trains data-parallel on every rank of a torchrun launch (writes on rank 0)


SCORERS: Registry[ScorerSpec] = Registry("next-item scorer")


# ---------------------------------------------------------------------------------------------- popularity
def _train_popularity(ctx: Any, name: str, out: Path) -> dict[str, Any]:
    from thinkrec.baselines.popularity import Popularity

    Popularity.fit(ctx.get_split()).save_folder(out)
    return {}


def _load_popularity(folder: Path, device: str) -> Any:
    from thinkrec.baselines.popularity import Popularity

    return Popularity.from_folder(folder, device)


SCORERS.register("popularity", "most popular: training-set item counts (the floor)", ScorerSpec(
    "popularity", lambda n: "popularity", lambda cfg, n: split_inputs(cfg), False, _train_popularity, _load_popularity))


# ---------------------------------------------------------------------------------------------- SASRec
def _train_sasrec(ctx: Any, name: str, out: Path) -> dict[str, Any]:
    """SASRec, or a variant trained by the same loop from its own config section (``bsarec``)."""
    import numpy as np

    from thinkrec.baselines.sasrec import train_sasrec
    from thinkrec.utils.io import write_json

    cfg = getattr(ctx.config, name)
    model, history = train_sasrec(ctx.get_split(), cfg, ctx.config.run.device, log=lambda m: ctx.log(f"{name}: {m}"),
                                  progress=ctx.stage_progress(name), checkpoint_dir=ctx.checkpoints(name))
    if not dist.is_main():  # torchrun: every rank trained, rank 0 writes
        return {}
    model.save_folder(out)
    write_json(out / "history.json", history)
    summary = {"epochs": len(history), "s_per_epoch": float(np.median([h["train_s"] for h in history])),
               "best_valid_ndcg@10": max((h.get("valid_ndcg@10", 0.0) for h in history), default=0.0)}
    write_json(out / "train_metrics.json", summary)
    return summary


def _load_sasrec(folder: Path, device: str) -> Any:
    from thinkrec.baselines.sasrec import SASRec

    return SASRec.from_folder(folder, device)


SCORERS.register("sasrec", "SASRec: causal Transformer; full-softmax CE, sampled softmax or gBCE (sasrec.loss)", ScorerSpec(
    "sasrec", lambda n: "sasrec", lambda cfg, n: {"sasrec": cfg.sasrec, **split_inputs(cfg)}, False, _train_sasrec,
    _load_sasrec, distributed=True))


# ---------------------------------------------------------------------------------------------- BSARec
def _load_bsarec(folder: Path, device: str) -> Any:
    from thinkrec.baselines.bsarec import BSARec

    return BSARec.from_folder(folder, device)


SCORERS.register("bsarec", "BSARec (Shin et al. 2024): SASRec mixing attention with a learned frequency filter; "
                 "trained when listed in candidates.sources", ScorerSpec(
    "sasrec", lambda n: "bsarec", lambda cfg, n: {"bsarec": cfg.bsarec, **split_inputs(cfg)}, False, _train_sasrec,
    _load_bsarec, distributed=True))


# ---------------------------------------------------------------------------------------------- co-occurrence
def _train_cooc(ctx: Any, name: str, out: Path) -> dict[str, Any]:
    from thinkrec.baselines.cooccurrence import Cooccurrence

    model = Cooccurrence.fit(ctx.get_split(), ctx.config.candidates.cooc)
    model.save_folder(out)
    return {"pairs": int(model.matrix.nnz)}


def _load_cooc(folder: Path, device: str) -> Any:
    from thinkrec.baselines.cooccurrence import Cooccurrence

    return Cooccurrence.from_folder(folder, device)


SCORERS.register("cooc", "item-to-item co-occurrence in the training sequences (a candidate source)", ScorerSpec(
    "candidates", lambda n: "cooc", lambda cfg, n: {"cooc": cfg.candidates.cooc, **split_inputs(cfg)}, False,
    _train_cooc, _load_cooc))


# ---------------------------------------------------------------------------------------------- EASE
def _train_ease(ctx: Any, name: str, out: Path) -> dict[str, Any]:
    from thinkrec.baselines.ease import EASE

    model = EASE.fit(ctx.get_split(), ctx.config.candidates.ease, ctx.config.run.device)
    model.save_folder(out)
    return {"items": model.n_items, "l2": model.config.l2}


def _load_ease(folder: Path, device: str) -> Any:
    from thinkrec.baselines.ease import EASE

    return EASE.from_folder(folder, device)


SCORERS.register("ease", "EASE (Steck 2019): closed-form item × item ridge regression (a candidate source)", ScorerSpec(
    "candidates", lambda n: "ease", lambda cfg, n: {"ease": cfg.candidates.ease, **split_inputs(cfg)}, False,
    _train_ease, _load_ease))


# ---------------------------------------------------------------------------------------------- generative retrievers
def _train_generative(ctx: Any, name: str, out: Path) -> dict[str, Any]:
    from thinkrec.retrieval.stage import train_one
    from thinkrec.tokenize.stage import load_tokenize

    _, summary = train_one(name, ctx.get_split(), load_tokenize(ctx.root / "sids"), ctx.config.retrieval, out.parent,
                           ctx.config.run.device, log=lambda m: ctx.log(f"{name}: {m}"), progress=ctx.stage_progress(name),
                           checkpoint_dir=ctx.checkpoints(name))  # the graph discards it when the inputs change
    return summary


def _load_generative(folder: Path, device: str) -> Any:
    from thinkrec.retrieval.stage import load_scorer

    return load_scorer(folder, device)


def _generative_inputs(cfg: Any, name: str) -> dict[str, Any]:
    r = cfg.retrieval
    return {"model": r.model_config(name), "train": r.train, **split_inputs(cfg)}


def _register_generative() -> None:
    from thinkrec.retrieval.stage import RETRIEVERS

    for entry in RETRIEVERS.entries():
        SCORERS.register(entry.name, entry.description, ScorerSpec(
            "retrieval", lambda n: f"retrieval/{n}", _generative_inputs, True, _train_generative, _load_generative,
            generative=True, distributed=True))


_register_generative()


def active_scorers(cfg: Any) -> list[str]:
    """The scorers a config trains: popularity and SASRec when their stages are listed, retrieval.models, and
    co-occurrence / EASE / BSARec when the candidate stage uses them."""
    names = [n for n in ("popularity", "sasrec") if n in cfg.stages]
    if "retrieval" in cfg.stages:
        names += [m for m in cfg.retrieval.models if m not in names]
    if "candidates" in cfg.stages:
        sources = candidate_sources(cfg)
        names += [n for n in ("cooc", "ease", "bsarec") if n in sources]
    return names


def candidate_sources(cfg: Any) -> list[str]:
    """The merged candidate set's sources: ``candidates.sources``, or (None) SASRec, the generative retrievers,
    co-occurrence and popularity, as far as the config trains them."""
    if "candidates" not in cfg.stages:
        return []
    if cfg.candidates.sources is not None:
        for name in cfg.candidates.sources:
            SCORERS.get(name, "candidates.sources")
        return list(cfg.candidates.sources)
    names = ["sasrec"] if "sasrec" in cfg.stages else []
    if "retrieval" in cfg.stages:
        names += list(cfg.retrieval.models)
    return names + ["cooc"] + (["popularity"] if "popularity" in cfg.stages else [])
