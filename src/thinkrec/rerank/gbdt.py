"""LightGBM LambdaRank over the candidate features: the gradient-boosted-trees re-ranker production systems ship,
so the neural re-rankers (DNN, PRM, EG-Rerank, EGLR) are measured against the industry workhorse.

One query group per list (its real candidates, ``items >= 0``), graded by the lists' labels; early stopping on the
hold-out lists by LightGBM's own NDCG@10. :class:`LightGBMRanker` is a parameter-free ``torch.nn.Module`` around
the booster, so :func:`~thinkrec.rerank.train.rerank_orders`, latency and the pipeline call it like the torch
scorers (``scores(batch)``, ``.eval()``, ``.to(device)``). On disk it is LightGBM's own text format (``model.txt``),
never a pickle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from thinkrec.rerank.lists import RerankLists
from thinkrec.utils import progress
from thinkrec.utils.config import spec

if TYPE_CHECKING:
    import lightgbm

    from thinkrec.rerank.train import RerankTrainConfig

#: LightGBM's default ``label_gain`` (2^i − 1) covers labels 0..30.
MAX_LABEL = 30


@dataclass
class LightGBMConfig:
    num_leaves: int = spec(63, ge=2, le=131072)
    learning_rate: float = spec(0.05, gt=0.0)
    n_estimators: int = spec(1000, ge=1)  # most boosting rounds (early stopping usually ends sooner)
    min_data_in_leaf: int = spec(50, ge=0)
    feature_fraction: float = spec(0.8, gt=0.0, le=1.0)
    bagging_fraction: float = spec(0.8, gt=0.0, le=1.0)
    bagging_freq: int = spec(1, ge=0)  # 0 = no bagging
    lambda_l2: float = spec(1.0, ge=0.0)
    early_stopping_rounds: int = spec(50, ge=1)  # rounds without hold-out NDCG@10 gain
    lambdarank_truncation_level: int = spec(20, ge=1)  # pairs are formed with the top this-many of each list
    num_threads: int = spec(0, ge=0)  # 0 = torch.get_num_threads()


def _threads(cfg: LightGBMConfig) -> int:
    return int(cfg.num_threads or torch.get_num_threads())


def lists_feature_names(lists: RerankLists) -> tuple[str, ...]:
    """The lists' feature names; generic ``feature_<i>`` when they do not match the width of ``lists.features``
    (lists built in code with features of their own)."""
    names = lists.feature_names
    if len(names) != lists.n_features:
        names = tuple(f"feature_{i}" for i in range(lists.n_features))
    return names


def query_data(lists: RerankLists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N, F], y [N], group sizes)`` over the real candidates, list by list (a list without any is no group);
    labels rounded to LightGBM's integer relevance grades 0..30."""
    mask = lists.mask
    x = np.ascontiguousarray(lists.features[mask], dtype=np.float32)
    y = np.rint(np.clip(lists.labels[mask], 0, MAX_LABEL)).astype(np.int32)
    sizes = mask.sum(1)
    return x, y, sizes[sizes > 0].astype(np.int32)


def _lgb_name(name: str) -> str:
    """LightGBM refuses JSON punctuation in feature names (merged lists name columns ``<source>:<feature>``)."""
    return re.sub(r'[",:\[\]{}\s]', "_", name)


class LightGBMRanker(nn.Module):
    """A trained LambdaRank booster as a re-ranker: ``scores(batch)`` → ``[B, L]`` on the batch's device."""

    kind = "scorer"
    loss_kind = "lambdarank"

    def __init__(self, booster: lightgbm.Booster, feature_names: tuple[str, ...] | list[str], cfg: LightGBMConfig):
        super().__init__()
        if booster.num_feature() != len(feature_names):
            raise ValueError(f"booster has {booster.num_feature()} features, {len(feature_names)} names given")
        self.booster = booster
        self.feature_names = tuple(feature_names)
        self.cfg = cfg

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_trees(self) -> int:
        return int(self.booster.num_trees())

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Booster scores of every slot (padding included: :func:`rerank_orders` masks it)."""
        feats = batch["features"]
        if feats.shape[-1] != self.n_features:
            raise ValueError(f"lists have {feats.shape[-1]} features per candidate, the LightGBM re-ranker was "
                             f"trained on {self.n_features} ({', '.join(self.feature_names)})")
        x = feats.detach().reshape(-1, self.n_features).cpu().numpy()
        out = (np.asarray(self.booster.predict(x, num_threads=_threads(self.cfg)), dtype=np.float32)
               if x.shape[0] else np.zeros(0, np.float32))
        return torch.from_numpy(out).reshape(feats.shape[:-1]).to(feats.device)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores(batch)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature (which features the trees lean on)."""
        gain = self.booster.feature_importance("gain")
        return {n: float(g) for n, g in zip(self.feature_names, gain, strict=True)}

    # -- persistence: LightGBM's text format + JSON (the caller writes config.json / history.json)
    def write(self, folder: str | Path) -> None:
        """``model.txt`` (the booster) and ``importance.json`` (gain per feature) into ``folder``."""
        folder = Path(folder)
        (folder / "model.txt").write_text(self.booster.model_to_string())
        (folder / "importance.json").write_text(json.dumps(self.feature_importance(), indent=2))

    @classmethod
    def read(cls, folder: str | Path, feature_names: list[str], cfg: LightGBMConfig) -> LightGBMRanker:
        """The ranker :meth:`write` left in ``folder`` (names and config from its ``config.json``)."""
        import lightgbm as lgb

        return cls(lgb.Booster(model_str=(Path(folder) / "model.txt").read_text()), feature_names, cfg)


def train_lightgbm(train: RerankLists, valid: RerankLists, config: RerankTrainConfig,
                   log: Callable[[str], None] = print) -> tuple[LightGBMRanker, list[dict[str, Any]]]:
    """LambdaRank on ``train``'s lists with a positive (the others carry no pairwise gradient), early-stopped on
    ``valid``'s by NDCG@10 (lists without a positive would score a constant 1); the booster is cut to its best
    round. History: one ``{"stage", "round", "valid_ndcg@10"}`` per round."""
    import lightgbm as lgb

    cfg: LightGBMConfig = config.gbdt
    if valid.n_features != train.n_features:
        raise ValueError(f"hold-out lists have {valid.n_features} features per candidate, training lists {train.n_features}")
    names = lists_feature_names(train)
    fit = train.with_positives()
    if len(fit) == 0:
        raise ValueError("no training list has a positive label: LambdaRank has nothing to learn from")
    x, y, group = query_data(fit)
    params: dict[str, Any] = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [10],
        "lambdarank_truncation_level": cfg.lambdarank_truncation_level,
        "num_leaves": cfg.num_leaves, "learning_rate": cfg.learning_rate, "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction, "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": cfg.bagging_freq, "lambda_l2": cfg.lambda_l2,
        "seed": config.seed, "deterministic": True, "force_row_wise": True, "num_threads": _threads(cfg),
        "verbose": -1,
    }
    dtrain = lgb.Dataset(x, y, group=group, feature_name=[_lgb_name(n) for n in names], params={"verbose": -1})
    evals: dict[str, Any] = {}
    callbacks: list[Callable[..., None]] = [
        lambda env: progress.report("rerank lightgbm rounds", env.iteration + 1, env.end_iteration)]
    valid_sets: list[lgb.Dataset] = []
    hold = valid.with_positives()
    if len(hold):
        xv, yv, gv = query_data(hold)
        valid_sets = [lgb.Dataset(xv, yv, group=gv, reference=dtrain, params={"verbose": -1})]
        callbacks += [lgb.record_evaluation(evals),
                      lgb.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False)]
    else:
        log(f"lightgbm: no hold-out list has a positive: {cfg.n_estimators} rounds without early stopping")
    booster = lgb.train(params, dtrain, num_boost_round=cfg.n_estimators, valid_sets=valid_sets,
                        valid_names=["valid"][: len(valid_sets)], callbacks=callbacks)
    best = int(booster.best_iteration)
    # keep only the best round's trees (lgb.train already does, unless told to keep training), so the model in
    # memory is exactly the one saved and loaded
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best if best > 0 else -1))
    curve = evals.get("valid", {}).get("ndcg@10", [])
    rounds = len(curve) or int(booster.current_iteration())
    history = [{"stage": "lightgbm", "round": i + 1, "valid_ndcg@10": float(v)} for i, v in enumerate(curve)]
    model = LightGBMRanker(booster, names, cfg)
    log(f"lightgbm: {rounds} rounds, kept {model.n_trees} trees"
        + (f" (best round {best}: valid NDCG@10 {curve[best - 1]:.4f})" if best > 0 and curve else ""))
    return model.eval(), history
