"""Training and applying re-rankers: the evaluator (log-loss), scorers (pointwise / listwise), the pointer
generator (supervised warm start, then RL against the evaluator with group-normalised advantages and a PPO
clip), and the metrics of re-ranked lists.

Under torch.distributed (``torchrun``; :mod:`thinkrec.utils.distributed`) the trainers are data-parallel: each
rank takes a contiguous slice of every batch's lists, DDP averages the gradients, and every loss term — a mean over
candidates (log-loss), lists with a positive (listwise), decoding steps with a positive left (the pointer loss) or
rollout steps (RL) — is weighted by its rank's share of the batch's count of them, so each step's gradient is the
one-process gradient of the combined batch (exactly, to float precision, with dropout 0; RL runs without
dropout). RL samples the rollouts of the whole batch on every rank (the same draws as one process) and splits the
PPO updates. Validation lists are sharded.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thinkrec.eval.metrics import first_hit_ranks, list_metrics, rank_metrics
from thinkrec.rerank.gbdt import LightGBMConfig, LightGBMRanker
from thinkrec.rerank.lists import RerankLists
from thinkrec.rerank.models import RERANKERS, ListEvaluator, PointerGenerator, RerankBase, RerankModelConfig
from thinkrec.utils import distributed as dist
from thinkrec.utils import progress
from thinkrec.utils.checkpoint import Checkpointer, generator_state, set_generator_state, subdir
from thinkrec.utils.config import config_hash, spec
from thinkrec.utils.faults import check_finite, training_step
from thinkrec.utils.training import param_groups

RERANK_MODELS = RERANKERS.names()


@dataclass
class RerankTrainConfig:
    batch_size: int = spec(128, ge=1)
    lr: float = spec(1e-3, gt=0.0)
    weight_decay: float = spec(0.01, ge=0.0)
    epochs: int = spec(30, ge=1)  # supervised epochs (scorers, generator warm start)
    pointwise_weight: float = spec(3.0, ge=0.0)  # generators: + this × log-loss of the first step's scores on every list (lists
    #   without a positive then also teach the generator, as they teach the pointwise DNN)
    patience: int = spec(4, ge=0)  # epochs without validation NDCG@5 gain
    evaluator_epochs: int = spec(30, ge=1)
    # RL (egrerank, eglr): group-normalised advantages over `rollouts` samples per request, PPO clip
    rl_epochs: int = spec(6, ge=0)
    rollouts: int = spec(8, ge=2)  # ≥ 2: advantages are normalised within each request's group
    rl_batch_requests: int = spec(64, ge=1)  # requests per RL batch (× rollouts rows)
    # a random subset of training requests per RL epoch (None = all)
    rl_requests_per_epoch: int | None = spec(None, ge=1)
    ppo_clip: float = spec(0.1, gt=0.0)
    ppo_updates: int = spec(2, ge=1)  # gradient steps per batch of rollouts
    entropy_bonus: float = spec(0.001, ge=0.0)
    rl_lr: float = spec(5e-4, gt=0.0)
    sl_weight: float = spec(0.5, ge=0.0)  # supervised loss kept during RL (anchors the policy to the logged labels)
    rl_select: str = spec("auto", choices=("auto", "evaluator", "ndcg"))  # RL epoch kept by validation evaluator score ("evaluator") or label NDCG@5 ("ndcg");
    #   auto: evaluator on impression lists (its click model is the objective), ndcg on funnel lists (exact labels)
    reward: str = spec("auto", choices=("auto", "clicks", "dcg"))  # clicks (Σ evaluator click probabilities) | dcg (Σ p_k / log2(k + 2)); auto: dcg for funnel lists
    grad_clip: float = spec(1.0, gt=0.0)
    max_train_s: float | None = spec(None, gt=0.0)
    seed: int = 0
    gbdt: LightGBMConfig = field(default_factory=LightGBMConfig)  # the lightgbm re-ranker (trees, not epochs)


def model_config_for(name: str, base: RerankModelConfig, lists: RerankLists | None = None) -> RerankModelConfig:
    """Seq2Slate and EG-Rerank are the generator without reasoning; EGLR keeps the configured S_max. With
    ``lists``, the feature width is theirs (merged-candidate lists carry per-source features)."""
    cfg = copy.deepcopy(base)
    if RERANKERS.get(name).no_reasoning:
        cfg.s_max = 0
    if lists is not None:
        cfg.n_features = lists.n_features
    return cfg


def build_model(name: str, item_category: np.ndarray, list_len: int, cfg: RerankModelConfig) -> RerankBase:
    """Re-ranker ``name`` for a catalogue (``item_category`` [n_items], 0 = none) and lists up to ``list_len``."""
    spec = RERANKERS.get(name)
    if spec.cls is None:
        raise ValueError(f"re-ranker {name!r} has no model")
    if spec.trainer is not None:
        raise ValueError(f"re-ranker {name!r} is not built from a model config: train_reranker trains it, "
                         "load_reranker loads it")
    kwargs: dict[str, Any] = {"max_len": max(64, list_len)} if spec.positional else {}
    return spec.cls(len(item_category), int(item_category.max(initial=0)) + 1, torch.from_numpy(item_category), cfg, **kwargs)


def build_evaluator(item_category: np.ndarray, list_len: int, cfg: RerankModelConfig) -> ListEvaluator:
    return ListEvaluator(len(item_category), int(item_category.max(initial=0)) + 1, torch.from_numpy(item_category),
                         cfg, max_len=max(64, list_len))


# ---------------------------------------------------------------------------------------------- helpers
def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    return [idx[i: i + size] for i in range(0, n, size)]


def _optimizer(model: nn.Module, lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, wd), lr=lr)


def ideal_order(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Candidates by label (descending), ties in initial order, padding last."""
    L = labels.shape[1]
    pos = torch.arange(L, device=labels.device)[None].float()
    key = torch.where(mask, -labels.float() * (L + 1) + pos, torch.full_like(labels.float(), 1e9) + pos)
    return key.argsort(dim=-1, stable=True)


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy toward the label distribution (lists without a positive contribute nothing).
    Under torch.distributed: this rank's part of the mean over the combined batch (every rank calls it)."""
    y = labels * mask
    has = y.sum(1) > 0
    (share,) = dist.share(int(has.sum()), device=scores.device)
    if not bool(has.any()):
        return scores.sum() * 0.0
    logp = torch.log_softmax(scores.masked_fill(~mask, -1e9), -1)
    target = y / y.sum(1, keepdim=True).clamp_min(1e-9)
    return -(target * logp).sum(1)[has].mean() * share


def generator_supervised_loss(model: PointerGenerator, batch: dict[str, torch.Tensor],
                              pointwise_weight: float = 0.0) -> tuple[torch.Tensor, Any]:
    """Teacher-forced pointer loss: at each position, −log of the probability of the best remaining labels
    (+ ``pointwise_weight`` × log-loss of the first step's scores against the labels, on every list). Under
    torch.distributed: this rank's part of the means over the combined batch (every rank calls it)."""
    labels, mask = batch["labels"], batch["mask"]
    T = min(model.cfg.max_decode, mask.shape[1])
    actions = ideal_order(labels, mask)[:, :T]
    trace = model.decode(batch, actions=actions)
    B, L = mask.shape
    chosen_before = torch.zeros(B, T, L, dtype=torch.bool, device=mask.device)
    onehot = F.one_hot(actions, L).bool()  # [B, T, L]
    chosen_before[:, 1:] = onehot.cumsum(1)[:, :-1] > 0
    avail = mask[:, None, :] & ~chosen_before
    y = torch.where(avail, labels[:, None, :].expand(B, T, L), torch.zeros(()))
    best = y.max(-1, keepdim=True).values
    target = avail & (y == best) & (best > 0)
    logp = torch.log_softmax(trace.step_logits, -1)
    lse = torch.logsumexp(logp.masked_fill(~target, -1e9), -1)
    active = target.any(-1)
    steps_share, candidates_share = dist.share(int(active.sum()), int(mask.sum()), device=mask.device)
    loss = -lse[active].mean() * steps_share if bool(active.any()) else trace.step_logits.sum() * 0.0
    if pointwise_weight > 0:
        first = trace.step_logits[:, 0]
        pointwise = F.binary_cross_entropy_with_logits(first[mask], labels[mask].clamp(0, 1))
        loss = loss + pointwise_weight * candidates_share * pointwise
    return loss, trace


@torch.inference_mode()
def rerank_orders(model: RerankBase | LightGBMRanker | None, lists: RerankLists, batch_size: int = 512, device: str = "cpu",
                  return_traces: bool = False) -> np.ndarray | tuple[np.ndarray, list]:
    """Permutation ``[n, L]`` of each list (candidate indices, best first); ``None`` = the initial order."""
    n, L = lists.items.shape
    if model is None:
        order = np.tile(np.arange(L), (n, 1))
        return (order, []) if return_traces else order
    model.eval()
    orders, traces = [], []
    for idx in _batches(n, batch_size, None):
        b = lists.tensors(idx, device)
        if isinstance(model, PointerGenerator):
            tr = model.decode(b)
            orders.append(model.complete(b, tr).cpu().numpy())
            traces.append(tr)
        else:
            s = model.scores(b).masked_fill(~b["mask"], float("-inf"))
            orders.append(s.argsort(dim=-1, descending=True, stable=True).cpu().numpy())  # ties keep the initial order
    order = np.concatenate(orders)
    return (order, traces) if return_traces else order


def order_metrics(lists: RerankLists, orders: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, np.ndarray]:
    """Per-list MAP@K / NDCG@K (LibRerank); funnel lists add R@1 / R@5 of the true item (thinkrec.eval.metrics)."""
    shown = np.take_along_axis(lists.mask, orders, 1)
    out = list_metrics(lists.labels, orders, ks, shown)
    if lists.source.startswith("funnel"):
        hits = rank_metrics(first_hit_ranks(np.take_along_axis(lists.labels, orders, 1)), (1, 5))
        out.update({k: hits[k] for k in ("recall@1", "recall@5")})
    return out


@torch.inference_mode()
def list_reward(evaluator: ListEvaluator, batch: dict[str, torch.Tensor], order: torch.Tensor, kind: str) -> torch.Tensor:
    p = evaluator.list_probs(batch, order) * batch["mask"].gather(1, order)
    if kind == "dcg":
        p = p / torch.log2(torch.arange(p.shape[1], device=p.device, dtype=p.dtype) + 2)[None]
    return p.sum(1)


def reward_kind(config: RerankTrainConfig, lists: RerankLists) -> str:
    if config.reward != "auto":
        if config.reward not in ("clicks", "dcg"):
            raise ValueError(f"reward must be clicks, dcg or auto, got {config.reward!r}")
        return config.reward
    return "dcg" if lists.source.startswith("funnel") else "clicks"


def evaluator_scores(evaluator: ListEvaluator, lists: RerankLists, orders: np.ndarray, kind: str,
                     device: str = "cpu") -> np.ndarray:
    evaluator.eval()
    out = []
    for idx in _batches(len(lists), 512, None):
        b = lists.tensors(idx, device)
        out.append(list_reward(evaluator, b, torch.from_numpy(orders[idx]).to(device), kind).cpu().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------- training
def _valid_ndcg5(model: RerankBase, valid: RerankLists, device: str) -> float:
    """Mean NDCG@5 over the validation lists (distributed: each rank orders its shard; the per-list values of
    every rank are gathered, so every rank gets the one-process figure)."""
    part = dist.shard_of(valid)
    per = order_metrics(part, rerank_orders(model, part, device=device), (5,)) if len(part) else {}
    return float(dist.gather_arrays(per).get("ndcg@5", np.zeros(0)).mean())


def _train_epoch(model: nn.Module, step: Callable[[dict[str, torch.Tensor]], torch.Tensor], data: RerankLists,
                 opt: torch.optim.Optimizer, config: RerankTrainConfig, epoch: int, device: str, stage: str = "",
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> float:
    """One shuffled pass (seeded by epoch, so a rerun repeats it); returns the mean loss per list. ``step(batch)``
    is the loss of this rank's lists of a batch (distributed: its part of the combined batch's loss)."""
    model.train()
    dist.decorrelate(config.seed, epoch)
    tot, n = 0.0, 0
    for i, idx in enumerate(_batches(len(data), config.batch_size, np.random.default_rng([config.seed, epoch]))):
        loss = step(data.tensors(idx[dist.batch_slice(len(idx))], device))
        batch = dist.reduce_mean(loss.detach())  # the whole batch's loss, the same on every rank
        check_finite(batch, f"rerank {stage}", f"{epoch}.{i}", "loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        tot, n = tot + float(batch) * len(idx), n + len(idx)
        if on_step:
            on_step({"stage": stage, "epoch": epoch, "step": i, "loss": float(batch)})
        training_step()
    return tot / max(n, 1)


def _evaluator_loss(model: ListEvaluator, b: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = b["mask"]
    (share,) = dist.share(int(mask.sum()), device=mask.device)
    return F.binary_cross_entropy_with_logits(model.logits(b)[mask], b["labels"][mask]) * share


def _checkpointer(checkpoint_dir: str | Path | None, what: str, model_cfg: Any, config: RerankTrainConfig,
                  lists: RerankLists, log: Callable[[str], None]) -> Checkpointer:
    key = config_hash({"what": what, "model": model_cfg, "train": config, "lists": [len(lists), lists.list_len,
                                                                                   lists.n_features]})
    return Checkpointer(checkpoint_dir, key, log)


def _resume(ckpt: Checkpointer, model: nn.Module, opt: torch.optim.Optimizer, device: str,
            log: Callable[[str], None]) -> dict[str, Any] | None:
    """Load model, optimizer and the torch RNG from ``ckpt`` when it holds a state; the state for the rest."""
    if (state := ckpt.load(device)) is None:
        return None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["torch_rng"])
    log(f"resumed from {ckpt.directory} after epoch {state['epoch']}")
    return state


def train_evaluator(train: RerankLists, valid: RerankLists, cfg: RerankModelConfig, config: RerankTrainConfig,
                    device: str = "cpu", log: Callable[[str], None] = print,
                    checkpoint_dir: str | Path | None = None,
                    on_step: Callable[[dict[str, Any]], None] | None = None) -> tuple[ListEvaluator, list[dict]]:
    """Log-loss on logged labels in the initial (displayed) order; the best epoch by validation log-loss.
    With ``checkpoint_dir`` each epoch ends with a checkpoint a killed run resumes from exactly; ``on_step({"stage",
    "epoch", "step", "loss"})`` follows every optimiser step (the whole batch's loss). Distributed: module docstring."""
    log = dist.on_main(log)
    torch.manual_seed(config.seed)
    cfg = replace(cfg, n_features=train.n_features)
    model = build_evaluator(train.item_category, train.list_len, cfg).to(device)
    opt = _optimizer(model, config.lr, config.weight_decay)
    best, best_state, bad, history, start = float("inf"), None, 0, [], 1
    ckpt = _checkpointer(checkpoint_dir, "evaluator", cfg, config, train, log)
    if (state := _resume(ckpt, model, opt, device, log)) is not None:
        best, best_state, bad, history = state["best"], state["best_state"], state["bad"], state["history"]
        start = config.evaluator_epochs + 1 if state["finished"] else state["epoch"] + 1
    step = dist.data_parallel(model, _evaluator_loss)
    valid_part = dist.shard_of(valid)
    for epoch in range(start, config.evaluator_epochs + 1):
        t0 = time.perf_counter()
        loss = _train_epoch(model, step, train, opt, config, epoch, device, "evaluator", on_step)
        sums = torch.tensor(_logloss_sums(model, valid_part, device), dtype=torch.float64, device=device)
        tot, n = dist.all_sum(sums).tolist()  # over every rank's validation lists
        vloss = tot / max(n, 1)
        history.append({"epoch": epoch, "loss": loss, "valid_logloss": vloss, "train_s": time.perf_counter() - t0})
        log(f"evaluator epoch {epoch}: loss {loss:.4f} valid log-loss {vloss:.4f}")
        if dist.is_main():
            progress.report("rerank evaluator epochs", epoch, config.evaluator_epochs)
        if vloss < best - 1e-5:
            best, best_state, bad = vloss, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        ckpt.save({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                   "best": best, "best_state": best_state, "bad": bad, "history": history,
                   "finished": bad >= config.patience})
        if bad >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def evaluator_logloss(model: ListEvaluator, lists: RerankLists, device: str = "cpu") -> float:
    tot, n = _logloss_sums(model, lists, device)
    return tot / max(n, 1)


@torch.inference_mode()
def _logloss_sums(model: ListEvaluator, lists: RerankLists, device: str = "cpu") -> tuple[float, float]:
    """``(Σ log-loss, candidates)`` over ``lists``."""
    model.eval()
    tot, n = 0.0, 0
    for idx in _batches(len(lists), 512, None):
        b = lists.tensors(idx, device)
        logits = model.logits(b)
        tot += float(F.binary_cross_entropy_with_logits(logits[b["mask"]], b["labels"][b["mask"]], reduction="sum"))
        n += int(b["mask"].sum())
    return tot, float(n)


def _supervised_loss(model: RerankBase, b: dict[str, torch.Tensor], config: RerankTrainConfig) -> torch.Tensor:
    if isinstance(model, PointerGenerator):
        return generator_supervised_loss(model, b, config.pointwise_weight)[0]
    scores = model.scores(b)
    if getattr(model, "loss_kind", "listwise") == "pointwise":
        (share,) = dist.share(int(b["mask"].sum()), device=scores.device)
        return F.binary_cross_entropy_with_logits(scores[b["mask"]], b["labels"][b["mask"]]) * share
    return listwise_loss(scores, b["labels"], b["mask"])


def _calibrate(model: RerankBase, lists: RerankLists, device: str, n: int = 2048) -> float | None:
    """Re-calibrate a generator's entropy gate on (a fixed sample of) training lists."""
    if not isinstance(model, PointerGenerator):
        return None
    model.eval()
    idx = np.random.default_rng(0).permutation(len(lists))[:n]
    return model.calibrate_threshold(lists.tensors(np.sort(idx), device))


def train_supervised(model: RerankBase, train: RerankLists, valid: RerankLists, config: RerankTrainConfig,
                     device: str = "cpu", log: Callable[[str], None] = print, tag: str = "",
                     checkpoint_dir: str | Path | None = None,
                     on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict]:
    """Supervised training with early stopping on validation NDCG@5; leaves the best weights in ``model``.
    With ``checkpoint_dir`` each epoch ends with a checkpoint a killed run resumes from exactly; ``on_step`` as in
    :func:`train_evaluator`. Distributed: module docstring."""
    log = dist.on_main(log)
    torch.manual_seed(config.seed)
    every_list = getattr(model, "loss_kind", "listwise") == "pointwise" or (
        isinstance(model, PointerGenerator) and config.pointwise_weight > 0)
    data = train if every_list else train.with_positives()
    opt = _optimizer(model, config.lr, config.weight_decay)
    best, best_state, bad, history, start = _valid_ndcg5(model, valid, device), None, 0, [], 1
    ckpt = _checkpointer(checkpoint_dir, f"supervised {type(model).__name__}", model.cfg, config, train, log)
    spent = 0.0
    if (state := _resume(ckpt, model, opt, device, log)) is not None:
        best, best_state, bad, history = state["best"], state["best_state"], state["bad"], state["history"]
        spent = state["spent"]
        start = config.epochs + 1 if state["finished"] else state["epoch"] + 1
    step = dist.data_parallel(model, lambda m, b: _supervised_loss(m, b, config))
    t_start = time.perf_counter() - spent
    for epoch in range(start, config.epochs + 1):
        t0 = time.perf_counter()
        loss = _train_epoch(model, step, data, opt, config, epoch, device, tag or "model", on_step)
        h_th = _calibrate(model, data, device)
        if h_th is not None and dist.active():  # the gate of rank 0 on every rank (computed alike, to the last bit)
            h_th = dist.broadcast(h_th)
            model.h_th.fill_(h_th)
        v = _valid_ndcg5(model, valid, device)
        history.append({"stage": "supervised", "h_th": h_th, "epoch": epoch, "loss": loss, "valid_ndcg@5": v,
                        "train_s": time.perf_counter() - t0})
        log(f"{tag} epoch {epoch}: loss {loss:.4f} valid NDCG@5 {v:.4f}")
        if dist.is_main():
            progress.report(f"rerank {tag or 'model'} epochs", epoch, config.epochs)
        if v > best + 1e-6 or best_state is None:
            best, best_state, bad = max(v, best), copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        capped = bool(config.max_train_s and time.perf_counter() - t_start > config.max_train_s)
        stop = dist.broadcast(bad >= config.patience or capped)
        if capped and bad < config.patience and epoch < config.epochs:
            log(f"{tag}: the {config.max_train_s:.0f}s safety cap (rerank.train.max_train_s) stopped training after "
                f"epoch {epoch} of {config.epochs}: this result depends on machine speed; raise the cap to reproduce it")
        ckpt.save({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                   "best": best, "best_state": best_state, "bad": bad, "history": history,
                   "spent": time.perf_counter() - t_start, "finished": stop})
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def _ppo_loss(model: PointerGenerator, bg: dict[str, torch.Tensor], actions: torch.Tensor, old_logp: torch.Tensor,
              adv: torch.Tensor, step_valid: torch.Tensor, b: dict[str, torch.Tensor], labelled: bool,
              config: RerankTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, pg)`` of one PPO update on rollouts ``bg`` of requests ``b``: the clipped policy gradient and the
    entropy bonus over the rollout steps that select a real item, + ``sl_weight`` × the supervised loss on the lists
    with labels (``labelled``: the whole batch has some). Distributed: this rank's part of the combined batch's."""
    new = model.decode(bg, actions=actions)
    ratio = torch.exp(new.logp - old_logp)
    a = adv[:, None]
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - config.ppo_clip, 1 + config.ppo_clip) * a)
    (share,) = dist.share(int(step_valid.sum()), device=adv.device)
    pg = pg[step_valid].mean() * share
    ent = new.entropy_final[step_valid].mean() * share
    loss = pg - config.entropy_bonus * ent
    if config.sl_weight > 0 and labelled:
        keep = (b["labels"] > 0).any(1)
        if not bool(keep.any()):  # distributed: none on this rank's slice; a list without labels adds 0 and keeps the
            keep[0] = True        # ranks' collectives in step
        loss = loss + config.sl_weight * generator_supervised_loss(model, {k: v[keep] for k, v in b.items()})[0]
    return loss, pg


def train_rl(model: PointerGenerator, evaluator: ListEvaluator, train: RerankLists, valid: RerankLists,
             config: RerankTrainConfig, device: str = "cpu", log: Callable[[str], None] = print, tag: str = "",
             checkpoint_dir: str | Path | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict]:
    """Policy gradient against the evaluator: ``rollouts`` sampled lists per request, advantages normalised within
    the group, PPO-clipped ratio of the new to the sampling policy (token level), an entropy bonus, and the
    supervised loss kept at ``sl_weight`` on lists with labels. Keeps the best epoch (the warm start included) by
    ``rl_select``: the evaluator's validation score (as generator–evaluator methods select; low-variance) or label
    NDCG@5 (noisy with few clicks per list). ``on_step({"stage", "epoch", "step", "update", "loss"})`` follows every
    PPO update. Distributed (module docstring): every rank samples the whole batch's rollouts, then updates on its
    slice of the requests."""
    log = dist.on_main(log)
    kind = reward_kind(config, train)
    gen = torch.Generator(device=device).manual_seed(config.seed)  # multinomial needs one on the sampled tensors' device
    opt = _optimizer(model, config.rl_lr, config.weight_decay)
    evaluator.eval()
    best, best_state, history = _valid_ndcg5(model, valid, device), copy.deepcopy(model.state_dict()), []
    G = config.rollouts
    t_start = time.perf_counter()
    if config.rl_select not in ("evaluator", "ndcg", "auto"):
        raise ValueError(f"rl_select must be evaluator, ndcg or auto, got {config.rl_select!r}")
    select = config.rl_select if config.rl_select != "auto" else ("ndcg" if train.source.startswith("funnel") else "evaluator")

    valid_part = dist.shard_of(valid)

    def select_score(v_ndcg: float) -> float:
        if select == "ndcg":
            return v_ndcg
        scores = (evaluator_scores(evaluator, valid_part, rerank_orders(model, valid_part, device=device), kind, device)
                  if len(valid_part) else np.zeros(0))
        return float(dist.gather_arrays({"score": scores})["score"].mean())

    best = select_score(best)
    ckpt = _checkpointer(checkpoint_dir, "rl", model.cfg, config, train, log)
    start, spent = 1, 0.0
    if (state := _resume(ckpt, model, opt, device, log)) is not None:
        best, best_state, history, spent = state["best"], state["best_state"], state["history"], state["spent"]
        set_generator_state(gen, state["gen"])
        start = config.rl_epochs + 1 if state["finished"] else state["epoch"] + 1
    step = dist.data_parallel(model, lambda m, *args: _ppo_loss(m, *args, config))
    t_start = time.perf_counter() - spent
    for epoch in range(start, config.rl_epochs + 1):
        rng = np.random.default_rng([config.seed, 1000 + epoch])
        t0, sums, n = time.perf_counter(), {"reward": 0.0, "pg": 0.0}, 0
        reqs = _batches(len(train), config.rl_batch_requests, rng)
        if config.rl_requests_per_epoch:
            reqs = reqs[: max(1, int(config.rl_requests_per_epoch) // config.rl_batch_requests)]
        for i, idx in enumerate(reqs):
            b = train.tensors(idx, device)
            bg = {k: v.repeat_interleave(G, 0) for k, v in b.items()}
            model.eval()  # no dropout: the ratio compares the same function before and after the update
            with torch.no_grad():  # the whole batch's rollouts on every rank: the draws of one process
                trace = model.decode(bg, sample=True, generator=gen)
                order = model.complete(bg, trace)
                reward = list_reward(evaluator, bg, order, kind).view(-1, G)
                adv = ((reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)).view(-1)
                step_valid = bg["mask"].gather(1, trace.actions)  # positions that selected a real item
            labelled = bool((b["labels"] > 0).any())
            mine = dist.batch_slice(len(idx))  # this rank's requests, and their rollouts (G rows each)
            rows = slice(mine.start * G, mine.stop * G)
            args = ({k: v[rows] for k, v in bg.items()}, trace.actions[rows], trace.logp[rows], adv[rows],
                    step_valid[rows], {k: v[mine] for k, v in b.items()}, labelled)
            for update in range(config.ppo_updates):
                loss, pg = step(*args)
                batch_loss = dist.reduce_mean(loss.detach())  # the whole batch's, the same on every rank
                check_finite(batch_loss, f"rerank {tag or 'model'} RL", epoch, "loss")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                if on_step:
                    on_step({"stage": "rl", "epoch": epoch, "step": i, "update": update, "loss": float(batch_loss)})
            sums["reward"] += float(reward.mean()) * len(idx)
            sums["pg"] += float(dist.reduce_mean(pg.detach())) * len(idx)
            n += len(idx)
            training_step()
        v = _valid_ndcg5(model, valid, device)
        sel = select_score(v)
        history.append({"stage": "rl", "epoch": epoch, "reward": sums["reward"] / max(n, 1), "pg": sums["pg"] / max(n, 1),
                        "valid_ndcg@5": v, "valid_select": sel, "train_s": time.perf_counter() - t0})
        log(f"{tag} RL epoch {epoch}: mean reward {sums['reward'] / max(n, 1):.4f} valid NDCG@5 {v:.4f} "
            f"valid {select} {sel:.4f}")
        if dist.is_main():
            progress.report(f"rerank {tag or 'model'} RL epochs", epoch, config.rl_epochs)
        if sel > best + 1e-6:
            best, best_state = sel, copy.deepcopy(model.state_dict())
        stop = dist.broadcast(bool(config.max_train_s and time.perf_counter() - t_start > config.max_train_s))
        if stop and epoch < config.rl_epochs:
            log(f"{tag}: the {config.max_train_s:.0f}s safety cap (rerank.train.max_train_s) stopped RL after epoch "
                f"{epoch} of {config.rl_epochs}: this result depends on machine speed; raise the cap to reproduce it")
        ckpt.save({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                   "gen": generator_state(gen), "best": best, "best_state": best_state, "history": history,
                   "spent": time.perf_counter() - t_start, "finished": stop})
        if stop:
            break
    model.load_state_dict(best_state)
    return history


def train_reranker(name: str, train: RerankLists, valid: RerankLists, model_config: RerankModelConfig,
                   config: RerankTrainConfig, evaluator: ListEvaluator | None = None, device: str = "cpu",
                   log: Callable[[str], None] = print, checkpoint_dir: str | Path | None = None,
                   on_step: Callable[[dict[str, Any]], None] | None = None,
                   ) -> tuple[RerankBase | LightGBMRanker | None, list[dict]]:
    """Train one re-ranker by name (``initial`` returns ``None``: the initial order); with ``checkpoint_dir`` a
    killed run resumes where it stopped (supervised and RL phases checkpoint each epoch); ``on_step``: every
    optimiser step of both phases (:func:`train_supervised`, :func:`train_rl`). A registered ``trainer``
    (``lightgbm``) trains on its own (``config.gbdt``): minutes at most, so no checkpoints and no ``on_step``."""
    spec = RERANKERS.get(name, "rerank.models")
    if spec.cls is None:
        return None, []
    if spec.trainer is not None:  # not a torch network (lightgbm): its own trainer, no epochs or checkpoints
        return spec.trainer(train, valid, config, dist.on_main(log))
    torch.manual_seed(config.seed)
    model = build_model(name, train.item_category, train.list_len, model_config_for(name, model_config, train)).to(device)
    history = train_supervised(model, train, valid, config, device, log, tag=name,
                               checkpoint_dir=subdir(checkpoint_dir, "supervised"), on_step=on_step)
    if spec.rl and config.rl_epochs > 0:
        if evaluator is None:
            raise ValueError(f"{name} trains against an evaluator: train one first (train_evaluator)")
        history += train_rl(model, evaluator, train, valid, config, device, log, tag=name,
                            checkpoint_dir=subdir(checkpoint_dir, "rl"), on_step=on_step)
    model.eval()
    return model, history
