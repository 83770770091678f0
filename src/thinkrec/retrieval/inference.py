"""Recommending with a trained retriever: top-K items per history, full-ranking scores, explanations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from thinkrec.data.batching import pad_histories
from thinkrec.data.splits import EvalExamples
from thinkrec.eval.metrics import rank_metrics, ranks_from_scores
from thinkrec.retrieval.beam import BeamResult, beams_to_items, constrained_beam_search
from thinkrec.retrieval.model import GenerativeRetriever
from thinkrec.tokenize.sids import SIDMap


@dataclass
class Recommendation:
    items: np.ndarray  # [B, k] item ids, −1 where fewer than k valid SIDs exist
    scores: np.ndarray  # [B, k] beam log-probabilities (plus the weighted dense term when re-scored)
    beams: BeamResult
    beam_index: np.ndarray  # [B, k] the beam each item came from (beams are in log-probability order)


class GenerativeScorer:
    """Wraps a retriever for the evaluation protocol: beams become a ranked list.

    ``score(users, tokens)`` returns ``[B, n_items]`` with each beam item's log-probability and −inf for
    items outside the beams, so ranks beyond ``beam_size`` count as misses (ties are broken against the
    target by the metrics).

    ``dense_weight`` > 0 re-scores the beams with the model's own item head (LIGER-style hybrid, Yang et al.
    2024): score = beam log-probability + ``dense_weight`` × the item head's logit (encoder state · item table, the
    auxiliary next-item loss trains that head; it equals the item log-softmax up to a per-user constant, so the
    order is the same at a cost per user that does not grow with the catalogue). Candidates still come only from
    the trie-constrained beams; only their order changes.
    """

    def __init__(self, model: GenerativeRetriever, sidmap: SIDMap, beam_size: int = 20, dense_weight: float = 0.0):
        if dense_weight < 0:
            raise ValueError(f"dense_weight must be ≥ 0, got {dense_weight}")
        if dense_weight > 0 and model.config.item_loss_weight <= 0:
            raise ValueError("dense re-scoring needs a model trained with the item head (item_loss_weight > 0)")
        self.model, self.sidmap, self.beam_size, self.dense_weight = model, sidmap, beam_size, float(dense_weight)
        self.trie = sidmap.trie().to(next(model.parameters()).device)

    def _rescored(self, tokens: torch.Tensor, beams: BeamResult, items: torch.Tensor) -> torch.Tensor:
        """Beam scores ``[B, K]``, plus the weighted item-head logit of each beam's item.

        The logit is the item log-softmax up to a per-user constant (its log-partition), and a constant per user
        re-orders nothing, so only the K beam items are scored: the cost per user does not grow with the catalogue.
        """
        scores = beams.scores.float()
        if self.dense_weight == 0:
            return scores
        state = beams.user_state if beams.user_state is not None \
            else self.model.last_state(self.model.encode(tokens)[0])[:, 0]  # the beam search's encoder state
        extra = self.model.item_logits(state, items).float().to(scores.device)
        return torch.where(items.to(scores.device) >= 0, scores + self.dense_weight * extra, scores)

    @torch.inference_mode()
    def recommend(self, tokens: torch.Tensor, k: int | None = None, return_thoughts: bool = False) -> Recommendation:
        beams = constrained_beam_search(self.model, tokens, self.trie, max(self.beam_size, k or 0), return_thoughts)
        items = beams_to_items(self.sidmap, beams.codes.cpu(), beams.scores.cpu())
        scores = self._rescored(tokens, beams, items).cpu()
        order = scores.argsort(dim=1, descending=True, stable=True)
        if self.dense_weight == 0:  # beams already come best first
            order = torch.arange(items.shape[1])[None].expand_as(items)
        k = k or self.beam_size
        top = order[:, :k]
        return Recommendation(items.gather(1, top).numpy(), scores.gather(1, top).numpy(), beams, top.numpy())

    @torch.inference_mode()
    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        beams = constrained_beam_search(self.model, tokens, self.trie, self.beam_size)
        items = beams_to_items(self.sidmap, beams.codes.cpu(), beams.scores.cpu()).to(tokens.device)
        scores = self._rescored(tokens, beams, items).to(tokens.device)
        out = torch.full((tokens.shape[0], self.sidmap.n_items), float("-inf"), device=tokens.device)
        ok = items >= 0
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(items)
        out[rows[ok], items[ok]] = scores[ok]
        return out


@torch.inference_mode()
def tune_dense_weight(model: GenerativeRetriever, sidmap: SIDMap, examples: EvalExamples, beam_size: int = 20,
                      grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), max_len: int = 50,
                      batch_size: int = 256) -> tuple[float, dict[float, float]]:
    """Pick :class:`GenerativeScorer`'s ``dense_weight`` on held-out examples (``EvalExamples``, e.g. validation):
    the beams are searched once per batch and re-ordered for every weight of ``grid``; returns the weight with the
    highest N@10 (the smallest on ties) and N@10 per weight, scored by :mod:`thinkrec.eval.metrics` exactly as the
    full-ranking protocol scores the scorer (pessimistic ties, items outside the beams unranked)."""
    if model.config.item_loss_weight <= 0:  # no item head to re-score with
        return 0.0, {}
    scorer = GenerativeScorer(model, sidmap, beam_size)
    gains = {w: 0.0 for w in grid}
    for lo in range(0, len(examples), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(examples)))
        tokens = torch.from_numpy(pad_histories(examples.offsets, examples.items, rows, max_len)).to(scorer.trie.device)
        beams = constrained_beam_search(model, tokens, scorer.trie, beam_size)
        items = beams_to_items(sidmap, beams.codes.cpu(), beams.scores.cpu())
        dense = model.item_logits(beams.user_state, items).float().cpu()  # log-softmax up to a per-user constant
        hit = items == torch.from_numpy(examples.targets[rows])[:, None]  # [B, K], at most one per row
        valid = items >= 0
        found, col = hit.any(1).numpy(), hit.float().argmax(1)  # col: the target's beam (any one when absent)
        for w in grid:
            s = (beams.scores.cpu().float() + w * dense).masked_fill(~valid, float("-inf"))
            rank = np.where(found, ranks_from_scores(s, col).numpy(), np.inf)  # 0-based rank among the beams
            gains[w] += float(rank_metrics(rank, (10,))["ndcg@10"].sum())
    ndcg = {w: g / max(len(examples), 1) for w, g in gains.items()}
    best = max(grid, key=lambda w: (round(ndcg[w], 6), -w))
    return best, ndcg


def nearest_clusters(model: GenerativeRetriever, thoughts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest cluster (cosine) of each thinking token ``thoughts [..., L, d]`` and its similarity;
    −1 at levels without clusters."""
    idx = torch.full(thoughts.shape[:-1], -1, dtype=torch.int64)
    sim = torch.zeros(thoughts.shape[:-1])
    with torch.no_grad():
        for lv in range(model.n_levels):
            if not model.has_clusters(lv):
                continue
            centres, _ = model.cluster_centres(lv)
            s = F.normalize(thoughts[..., lv, :], dim=-1) @ F.normalize(centres, dim=-1).T
            best = s.max(-1)
            idx[..., lv], sim[..., lv] = best.indices.cpu(), best.values.cpu()
    return idx, sim


def thought_agreement(model: GenerativeRetriever, thoughts: torch.Tensor, codes: torch.Tensor) -> dict[int, float]:
    """Per level, how often the thinking token's nearest cluster is the cluster of the code generated next."""
    idx, _ = nearest_clusters(model, thoughts)
    out = {}
    for lv in range(model.n_levels):
        if not model.has_clusters(lv):
            continue
        ok = codes[..., lv] >= 0
        truth = model.code_clusters[lv].cpu()[codes[..., lv].clamp(min=0).cpu()]
        out[lv] = float((idx[..., lv] == truth)[ok.cpu()].float().mean())
    return out
