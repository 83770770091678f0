"""Stage 3 as calls: build the lists (impressions or funnel) with their featurizer, train and score re-rankers,
and save / load each model as a standalone folder.

The pipeline (``pipeline/run.py``) runs these as the nodes ``rerank/lists`` (``lists/{train,valid,test}/`` +
``featurizer/``), ``rerank/evaluator`` and ``rerank/<model>`` (``config.json`` + ``model.safetensors`` +
``history.json``; metrics per model), then summarises them in ``rerank/metrics.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import EvalExamples, SequenceSplit
from thinkrec.rerank.gbdt import LightGBMConfig, LightGBMRanker
from thinkrec.rerank.lists import (
    GROUP_NAMES,
    ItemTables,
    ListFeaturizer,
    RerankLists,
    funnel_featurizer,
    funnel_lists,
    impression_lists,
    temporal_thirds,
)
from thinkrec.rerank.models import ListEvaluator, PointerGenerator, RerankBase, RerankModelConfig
from thinkrec.rerank.train import (
    RERANK_MODELS,
    RerankTrainConfig,
    build_evaluator,
    build_model,
    evaluator_scores,
    order_metrics,
    rerank_orders,
    reward_kind,
    train_reranker,
)
from thinkrec.retrieval.candidates import CandidateSet
from thinkrec.utils import distributed as dist
from thinkrec.utils.config import from_dict, spec
from thinkrec.utils.io import atomic_dir


@dataclass
class RerankStageConfig:
    models: list[str] = spec(default_factory=lambda: list(RERANK_MODELS), choices=lambda: RERANK_MODELS)
    # impressions | funnel | auto (impressions when the dataset logs them, else funnel)
    source: str = spec("auto", choices=("auto", "impressions", "funnel"))
    # funnel lists: the retriever whose top-K is re-ranked (s2gr | tiger | sasrec | auto)
    candidates: str = spec("auto", choices=lambda: ("auto", *_scorer_names()))
    k: int = spec(10, ge=1)  # funnel list length (up to 50)
    max_len: int = spec(50, ge=1)  # impression lists are cut to the first max_len shown items
    history_len: int = spec(50, ge=1)
    holdout_frac: float = spec(0.1, gt=0.0, lt=1.0)  # share of training lists held out for early stopping
    # merged candidates: share of validation lists on which stages are compared (disjoint)
    compare_frac: float = spec(0.1, gt=0.0, lt=1.0)
    source_features: bool = True  # merged candidates: each source's rank and score as candidate features
    # optional candidate-feature groups (thinkrec.rerank.lists.FEATURE_GROUPS): cooc, sid, brand, trend
    feature_groups: list[str] = spec(default_factory=lambda: list(GROUP_NAMES), choices=lambda: GROUP_NAMES)
    model: RerankModelConfig = field(default_factory=RerankModelConfig)
    train: RerankTrainConfig = field(default_factory=RerankTrainConfig)

    def _checks(self) -> list[tuple[str, str]]:
        if self.holdout_frac + self.compare_frac >= 1:
            return [("compare_frac", f"holdout_frac + compare_frac must be below 1, leaving lists to train on "
                                     f"(got {self.holdout_frac} + {self.compare_frac})")]
        return []


def _scorer_names() -> tuple[str, ...]:
    from thinkrec.pipeline.scorers import SCORERS

    return SCORERS.names()


# ---------------------------------------------------------------------------------------------- lists
Sets = tuple[RerankLists, RerankLists, RerankLists, ListFeaturizer]


def impression_sets(dataset: Dataset, cfg: RerankStageConfig, item_vectors: np.ndarray | None = None) -> Sets:
    """Impression lists split by time: 80 % train, 10 % valid (early stopping), 10 % test (+ their featurizer)."""
    lists, featurizer = impression_lists(dataset, cfg.max_len, cfg.history_len, item_vectors)
    return (*temporal_thirds(lists, cfg.holdout_frac, 0.1), featurizer)


TopK = Callable[[EvalExamples], tuple[np.ndarray, np.ndarray]]


def funnel_sets(split: SequenceSplit, top_k: TopK, category: np.ndarray, cfg: RerankStageConfig,
                item_vectors: np.ndarray | None = None, seed: int = 0, tables: ItemTables | None = None) -> Sets:
    """Training lists from validation-position targets (a random ``holdout_frac`` of users held out for early
    stopping), test lists from test targets. The retriever never trained on either target."""
    v_items, v_scores = top_k(split.valid)
    t_items, t_scores = top_k(split.test)
    featurizer = funnel_featurizer(split, category, item_vectors, tables=tables, groups=tuple(cfg.feature_groups))
    fit = funnel_lists(split.valid, v_items, v_scores, split, category, cfg.history_len, featurizer=featurizer)
    test = funnel_lists(split.test, t_items, t_scores, split, category, cfg.history_len, featurizer=featurizer)
    perm = np.random.default_rng(seed).permutation(len(fit))
    n_hold = max(1, int(round(len(fit) * cfg.holdout_frac)))
    return fit.subset(np.sort(perm[n_hold:])), fit.subset(np.sort(perm[:n_hold])), test, featurizer


def merged_sets(split: SequenceSplit, valid_candidates: CandidateSet, test_candidates: CandidateSet,
                category: np.ndarray, cfg: RerankStageConfig, item_vectors: np.ndarray | None = None, seed: int = 0,
                tables: ItemTables | None = None,
                ) -> tuple[RerankLists, RerankLists, RerankLists, RerankLists, ListFeaturizer]:
    """Lists over merged candidates, with every source's rank and score as features: training lists, the
    early-stopping hold-out and the comparison slice are three disjoint random slices of the validation-position
    lists (targets the retrievers never trained on, histories as they saw them); test lists from test targets.
    Returns (train, holdout, compare, test, featurizer)."""
    featurizer = funnel_featurizer(split, category, item_vectors, valid_candidates.sources if cfg.source_features else (),
                                   tables, tuple(cfg.feature_groups))

    def lists(examples: EvalExamples, cand: CandidateSet) -> RerankLists:
        if len(cand) != len(examples):
            raise ValueError(f"{len(cand)} candidate rows for {len(examples)} examples")
        return funnel_lists(examples, cand.items, None, split, category, cfg.history_len, featurizer=featurizer,
                            source_ranks=cand.ranks, source_scores=cand.scores)

    fit, test = lists(split.valid, valid_candidates), lists(split.test, test_candidates)
    perm = np.random.default_rng(seed).permutation(len(fit))
    n_hold = max(1, int(round(len(fit) * cfg.holdout_frac)))
    n_cmp = max(1, int(round(len(fit) * cfg.compare_frac)))
    hold, cmp, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold: n_hold + n_cmp]), np.sort(perm[n_hold + n_cmp:])
    compare = fit.subset(cmp)
    compare.meta["rows"] = cmp.tolist()  # into the validation examples: single sources are scored on the same slice
    return fit.subset(train), fit.subset(hold), compare, test, featurizer


# ---------------------------------------------------------------------------------------------- models on disk
def save_reranker(model: RerankBase | LightGBMRanker | None, name: str, path: str | Path,
                  history: list[dict] | None = None, list_len: int | None = None) -> Path:
    """A standalone folder: ``config.json`` (name, model config, list length), ``model.safetensors`` (weights and
    the item-category table the model was built for), ``history.json``. ``model=None`` saves ``initial``; a
    LightGBM ranker saves ``config.json`` (its ``gbdt`` config and feature names), ``model.txt`` (LightGBM's own
    text format) and ``importance.json`` (gain per feature) instead."""
    with atomic_dir(path) as tmp:
        info: dict[str, Any] = {"name": name}
        if isinstance(model, LightGBMRanker):
            model.write(tmp)
            info.update(gbdt=asdict(model.cfg), features=list(model.feature_names), list_len=int(list_len or 0))
        elif model is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            state["__item_category__"] = model.item_category.detach().cpu().long().contiguous()
            save_file(state, str(tmp / "model.safetensors"))
            info.update(model=asdict(model.cfg), list_len=int(list_len or 0))
        (tmp / "config.json").write_text(json.dumps(info, indent=2))
        (tmp / "history.json").write_text(json.dumps(history or [], indent=2))
    return Path(path)


def load_reranker(path: str | Path, device: str = "cpu") -> tuple[str, RerankBase | LightGBMRanker | None]:
    """A folder written by :func:`save_reranker` → (name, model or None for ``initial``); needs nothing else."""
    path = Path(path)
    info = json.loads((path / "config.json").read_text())
    if "gbdt" in info:
        cfg_gbdt = from_dict(LightGBMConfig, info["gbdt"], where=str(path / "config.json") + ": gbdt")
        return info["name"], LightGBMRanker.read(path, info["features"], cfg_gbdt).to(device).eval()
    if "model" not in info:
        return info["name"], None
    cfg = from_dict(RerankModelConfig, info["model"], where=str(path / "config.json"))
    state = load_file(str(path / "model.safetensors"))
    cat = state.pop("__item_category__").numpy()
    build = build_evaluator if info["name"] == "evaluator" else partial(build_model, info["name"])
    model = build(cat, int(info["list_len"]), cfg)
    model.load_state_dict(state)
    return info["name"], model.to(device).eval()


# ---------------------------------------------------------------------------------------------- diagnostics
@torch.inference_mode()
def reasoning_profile(model: PointerGenerator, lists: RerankLists, device: str = "cpu") -> dict[str, list[float]]:
    """Per decoded position: mean entropy before reasoning and at selection, mean reasoning steps, mean selection
    temperature, mean temperature of the reasoning steps taken (by step index)."""
    model.eval()
    sums: dict[str, Any] = {}
    n = None
    for lo in range(0, len(lists), 512):
        b = lists.tensors(np.arange(lo, min(lo + 512, len(lists))), device)
        tr = model.decode(b)
        real = b["mask"].gather(1, tr.actions).float()  # positions that selected a real candidate
        parts = {"entropy_first": tr.entropy_first, "entropy_final": tr.entropy_final, "steps": tr.steps,
                 "temp_select": tr.temp_select}
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + (v * real).sum(0)
        if tr.temp_reason.shape[-1]:
            took = (tr.temp_reason > 0).float()
            sums["temp_reason_sum"] = sums.get("temp_reason_sum", 0) + tr.temp_reason.sum((0, 1))
            sums["temp_reason_n"] = sums.get("temp_reason_n", 0) + took.sum((0, 1))
        n = real.sum(0) if n is None else n + real.sum(0)
    out = {k: (sums[k] / n.clamp_min(1)).tolist() for k in ("entropy_first", "entropy_final", "steps", "temp_select")}
    if "temp_reason_sum" in sums:
        out["temp_reason_by_step"] = (sums["temp_reason_sum"] / sums["temp_reason_n"].clamp_min(1)).tolist()
    return out


def latency_ms(model: RerankBase | None, lists: RerankLists, n: int = 200, device: str = "cpu") -> float:
    """Median wall time to re-rank one list (batch of 1), in milliseconds."""
    if model is None:
        return 0.0
    times = []
    for i in range(min(n, len(lists))):
        t = time.perf_counter()
        rerank_orders(model, lists.subset(np.array([i])), device=device)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def evaluate_orders(lists: RerankLists, orders: np.ndarray, evaluator: ListEvaluator | None, kind: str,
                    click_model: Any = None) -> dict[str, np.ndarray]:
    """Per-list metrics: list metrics, the evaluator's score, and expected clicks under a known click model."""
    per = order_metrics(lists, orders)
    if evaluator is not None:
        per["evaluator_score"] = evaluator_scores(evaluator, lists, orders, kind)
    if click_model is not None:
        hist = [h[h > 0] - 1 for h in lists.history]
        shown = np.take_along_axis(lists.items, orders, 1)
        per["expected_clicks"] = click_model.expected_clicks_batch(lists.users, hist, shown)
    return per


def reference_orders(lists: RerankLists, click_model: Any) -> dict[str, np.ndarray]:
    """Orders that know the true click model (synthetic lists): ``attractiveness`` sorts each list by the true
    per-item click probability if examined; ``true_greedy`` fills positions top-down by the largest marginal click
    probability (position bias and redundancy included). Upper references for expected clicks — and a check of
    what logged-click metrics say about lists that are better under the true model."""
    hist = [h[h > 0] - 1 for h in lists.history]
    n, width = lists.items.shape
    out = {name: np.tile(np.arange(width), (n, 1)) for name in ("attractiveness", "true_greedy")}
    for i in range(n):
        k = int(lists.mask[i].sum())  # real candidates come first; padding keeps its place at the end
        items, user = lists.items[i, :k], int(lists.users[i])
        out["attractiveness"][i, :k] = np.argsort(-click_model.attractiveness(user, hist[i], items), kind="stable")
        out["true_greedy"][i, :k] = click_model.greedy_order(user, hist[i], items)
    return out


# ---------------------------------------------------------------------------------------------- the stage
@dataclass
class FitResult:
    model: RerankBase | None
    metrics: dict[str, float]
    per_list: dict[str, np.ndarray]
    profile: dict[str, list[float]] | None
    history: list[dict]
    orders: np.ndarray | None = None  # [n, L] the model's order of each test list

def fit_and_score(name: str, train: RerankLists, valid: RerankLists, test: RerankLists, model_config: RerankModelConfig,
                  config: RerankTrainConfig, evaluator: ListEvaluator | None, click_model: Any = None,
                  device: str = "cpu", log: Callable[[str], None] = print, label: str | None = None,
                  checkpoint_dir: str | Path | None = None) -> FitResult:
    """Train re-ranker ``name`` (with ``model_config``; ablations pass their own) and score it on ``test``;
    ``checkpoint_dir``: where its training checkpoints (resume after a kill)."""
    label = label or name
    t = time.perf_counter()
    model, hist = train_reranker(name, train, valid, model_config, config, evaluator, device,
                                 log=lambda m: log(f"{label}: {m}"), checkpoint_dir=checkpoint_dir)
    train_s = time.perf_counter() - t
    if not dist.is_main():  # torchrun: every rank trained, rank 0 scores
        return FitResult(model, {}, {}, None, hist)
    orders = rerank_orders(model, test, device=device)
    per = evaluate_orders(test, orders, evaluator, reward_kind(config, train), click_model)
    m = {k: float(np.mean(v)) for k, v in per.items()}
    m.update(train_s=train_s, latency_ms=latency_ms(model, test, 100, device),
             rl_epochs=float(sum(1 for h in hist if h.get("stage") == "rl")))
    profile = None
    if isinstance(model, PointerGenerator):
        profile = reasoning_profile(model, test, device)
        m["reasoning_steps_per_list"] = float(np.sum(profile["steps"]))
    log(f"rerank {label}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return FitResult(model, m, per, profile, hist, orders)
