"""Recommending with a trained retriever: top-K items per history, full-ranking scores, explanations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from thinkrec.retrieval.beam import BeamResult, beams_to_items, constrained_beam_search
from thinkrec.retrieval.model import GenerativeRetriever
from thinkrec.tokenize.sids import SIDMap


@dataclass
class Recommendation:
    items: np.ndarray  # [B, k] item ids, −1 where fewer than k valid SIDs exist
    scores: np.ndarray  # [B, k] beam log-probabilities
    beams: BeamResult


class GenerativeScorer:
    """Wraps a retriever for the evaluation protocol: beams become a ranked list.

    ``score(users, tokens)`` returns ``[B, n_items]`` with each beam item's log-probability and −inf for
    items outside the beams, so ranks beyond ``beam_size`` count as misses (ties are broken against the
    target by the metrics).
    """

    def __init__(self, model: GenerativeRetriever, sidmap: SIDMap, beam_size: int = 20):
        self.model, self.sidmap, self.beam_size = model, sidmap, beam_size
        self.trie = sidmap.trie().to(next(model.parameters()).device)

    def recommend(self, tokens: torch.Tensor, k: int | None = None, return_thoughts: bool = False) -> Recommendation:
        beams = constrained_beam_search(self.model, tokens, self.trie, max(self.beam_size, k or 0), return_thoughts)
        items = beams_to_items(self.sidmap, beams.codes.cpu(), beams.scores.cpu()).numpy()
        k = k or self.beam_size
        return Recommendation(items[:, :k], beams.scores[:, :k].cpu().numpy(), beams)

    @torch.inference_mode()
    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        beams = constrained_beam_search(self.model, tokens, self.trie, self.beam_size)
        items = beams_to_items(self.sidmap, beams.codes.cpu(), beams.scores.cpu()).to(tokens.device)
        out = torch.full((tokens.shape[0], self.sidmap.n_items), float("-inf"), device=tokens.device)
        ok = items >= 0
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(items)
        out[rows[ok], items[ok]] = beams.scores[ok].float()
        return out


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
