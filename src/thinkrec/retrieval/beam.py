"""Trie-constrained beam search over SIDs, batched over users and beams at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from thinkrec.retrieval.model import GenerativeRetriever
from thinkrec.tokenize.sids import SIDMap, SIDTrie


@dataclass
class BeamResult:
    codes: torch.Tensor  # [B, beam, L] int64, −1 for dead beams
    scores: torch.Tensor  # [B, beam] summed log-probs, descending; −inf for dead beams
    thoughts: torch.Tensor | None = None  # [B, beam, L, d] thinking tokens of each beam's path (S²GR)
    user_state: torch.Tensor | None = None  # [B, d] encoder state at the last history item (item-head re-scoring)


@torch.inference_mode()
def constrained_beam_search(
    model: GenerativeRetriever,
    tokens: torch.Tensor,
    trie: SIDTrie,
    beam_size: int,
    return_thoughts: bool = False,
) -> BeamResult:
    """Top-``beam_size`` valid SIDs for each history in ``tokens [B, T]`` (item + 1, 0 = pad).

    The encoder runs once per user and its cross-attention keys/values are shared by the user's beams. At
    every level the trie masks codes that no valid SID continues with, log-probs accumulate, and each user
    keeps the top ``beam_size`` of its ``beam × K`` candidates. With thinking on, each beam takes one extra
    decoder step per level (a thinking token, not beam-expanded). The model runs in eval mode (restored after).
    When a user has fewer valid SIDs than ``beam_size``, the rest have score −inf and codes −1.
    """
    if trie.depth != model.n_levels:
        raise ValueError(f"trie depth {trie.depth} != model SID length {model.n_levels}")
    was_training = model.training
    model.eval()
    try:
        b, k, L = tokens.shape[0], beam_size, model.n_levels
        dev = tokens.device
        memory, mmask = encode_by_length(model, tokens)
        state = model.start(memory, mmask, k)
        scores = torch.full((b, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # one live beam at the start, so no duplicate prefixes
        codes = torch.zeros(b, k, 0, dtype=torch.int64, device=dev)
        thoughts: list[torch.Tensor] = []
        h = model.step(state, model.bos_input(b, k, model.last_state(memory).expand(b, k, -1)))[:, :, -1]
        for lv in range(L):
            if model.thinking:
                t_l = model.thought(lv, h)
                thoughts.append(t_l)
                h = model.step(state, t_l[:, :, None])[:, :, -1]
            logits = model.heads[lv](h)  # [B, k, K]
            prefix = codes.reshape(b * k, lv)
            logp = model.level_log_probs(lv, logits.reshape(b * k, -1), prefix).view(b, k, -1)
            allowed = trie.allowed_next(prefix).to(dev).view(b, k, -1)
            logp = logp.masked_fill(~allowed, float("-inf"))
            n_codes = logp.shape[-1]
            scores, idx = (scores[..., None] + logp).reshape(b, k * n_codes).topk(k, dim=1)
            parent, chosen = idx // n_codes, idx % n_codes
            codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, lv)), chosen[..., None]], 2)
            thoughts = [t.gather(1, parent[..., None].expand(-1, -1, t.shape[-1])) for t in thoughts]
            if lv < L - 1:
                state.reorder(parent)
                h = model.step(state, model.code_input(lv, chosen))[:, :, -1]
        codes = codes.masked_fill(~torch.isfinite(scores)[..., None], -1)
        th = torch.stack(thoughts, 2) if (return_thoughts and thoughts) else None
        return BeamResult(codes, scores, th, model.last_state(memory)[:, 0])
    finally:
        model.train(was_training)


def encode_by_length(model: GenerativeRetriever, tokens: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode(tokens)``'s memory and mask, computed on length buckets: rows sorted by history length,
    ``chunk`` at a time, each bucket cut to its own longest history. Histories are left-padded and positions
    count back from the window's end, so cutting all-padding columns changes nothing a real token sees (padding
    keys are masked); the memory is left-padded back to the batch's longest history (masked). Beauty histories
    average 9 items in a 50-item window, so the encoder does ~1/4 of the work of one padded batch."""
    tokens = tokens[:, -model.config.max_len:]
    b, t = tokens.shape
    lengths = (tokens > 0).sum(1)
    t_max = max(int(lengths.max()) if b else 1, 1)
    if b <= chunk:
        memory, mmask, _ = model.encode(tokens[:, t - t_max:])
        return memory, mmask
    per = 1 if model.config.input_mode == "item" else model.n_levels  # memory tokens per history item
    order = torch.argsort(lengths, stable=True)
    memory = torch.zeros(b, t_max * per, model.config.d_model, device=tokens.device)
    mmask = torch.zeros(b, t_max * per, dtype=torch.bool, device=tokens.device)
    for lo in range(0, b, chunk):
        rows = order[lo: lo + chunk]
        width = max(int(lengths[rows].max()), 1)
        m, mk, _ = model.encode(tokens[rows, t - width:])
        memory[rows, (t_max - width) * per:] = m.to(memory.dtype)
        mmask[rows, (t_max - width) * per:] = mk
    return memory, mmask


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
