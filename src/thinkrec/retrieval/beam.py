"""Trie-constrained beam search over SIDs, batched over users and beams at once."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from thinkrec.retrieval.model import GenerativeRetriever
from thinkrec.tokenize.sids import SIDMap, SIDTrie


@torch.no_grad()
def constrained_beam_search(
    model: GenerativeRetriever,
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
    trie: SIDTrie,
    beam_size: int,
    n_levels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``beam_size`` valid SIDs per user.

    ``memory [B, S, d]`` / ``memory_mask [B, S]`` come from ``model.encode``. At every level the trie masks
    codes that no valid SID continues with (−inf), log-probs accumulate, and each user keeps the top
    ``beam_size`` of its ``beam × K`` candidates. With thinking on, each beam runs one extra decoder step per
    level (not beam-expanded). The model is run in eval mode (its mode is restored afterwards).

    Returns ``(codes [B, beam, n_levels] int64, scores [B, beam])``, sorted by score, descending. When a user
    has fewer valid SIDs than ``beam_size``, the rest have score −inf and codes −1.
    """
    n_levels = trie.depth if n_levels is None else n_levels
    if n_levels > model.n_levels or n_levels > trie.depth:
        raise ValueError(f"n_levels={n_levels} exceeds the model ({model.n_levels}) or trie ({trie.depth}) depth")
    was_training = model.training
    model.eval()
    try:
        b, k = memory.shape[0], beam_size
        dev = memory.device
        mem = memory.repeat_interleave(k, 0)
        mem_mask = memory_mask.repeat_interleave(k, 0)
        inputs = model.bos_input(b * k)
        scores = torch.full((b, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # one live beam at the start, so no duplicate prefixes
        codes = torch.zeros(b * k, 0, dtype=torch.int64, device=dev)
        rows = torch.arange(b, device=dev)[:, None] * k
        for lv in range(n_levels):
            logits, inputs = model.decode_step(lv, inputs, mem, mem_mask)
            logp = torch.log_softmax(logits.float(), -1)
            allowed = trie.allowed_next(codes).to(dev)
            logp = logp.masked_fill(~allowed, float("-inf"))
            n_codes = logp.shape[1]
            total = (scores.reshape(-1, 1) + logp).reshape(b, k * n_codes)
            scores, idx = total.topk(k, dim=1)
            parent = (rows + idx // n_codes).reshape(-1)
            chosen = (idx % n_codes).reshape(-1)
            codes = torch.cat([codes[parent], chosen[:, None]], 1)
            inputs = inputs[parent]
            if lv < n_levels - 1:
                inputs = torch.cat([inputs, model.code_input(lv, chosen)], 1)
        codes = codes.reshape(b, k, n_levels)
        codes = codes.masked_fill(~torch.isfinite(scores)[..., None], -1)
        return codes, scores
    finally:
        model.train(was_training)


def beams_to_items(sidmap: SIDMap, codes: torch.Tensor, scores: torch.Tensor | None = None) -> Any:
    """Items ``[B, beam]`` of beam SIDs ``codes [B, beam, L]``; −1 for invalid beams (score −inf or not a SID).

    Returns a tensor on ``codes``' device for tensor input, else a numpy array.
    """
    shape = codes.shape[:2]
    flat = codes.reshape(-1, codes.shape[2])
    items = sidmap.sid_to_item(flat)
    if isinstance(items, torch.Tensor):
        items = items.reshape(shape)
        if scores is not None:
            items = items.masked_fill(~torch.isfinite(torch.as_tensor(scores, device=items.device)), -1)
        return items
    items = np.asarray(items).reshape(shape)
    if scores is not None:
        items = np.where(np.isfinite(np.asarray(scores)), items, -1)
    return items
