"""GR2's RL rewards (METHODS.md, stage 4).

The re-ranker answers with JSON ``{"reasoning": "...", "ranking": ["<|sid_begin|>…<|sid_end|>", …]}`` citing every
candidate exactly once. For the true next item x* and candidate set D:

* rank reward ``R_rank = (rank_pre(x*) − rank_re(x*)) / |D|`` (ranks are 1-based);
* format reward ``R_fmt`` (the answer parses and cites each candidate once) is added as ``R_rank + α·R_fmt`` only
  when ``R_rank > 0`` or ``rank_pre(x*) = 1`` — so copying the input order earns nothing;
* a malformed answer (not JSON of that shape, or not a permutation of the candidates) earns 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from thinkrec.llm.sid_tokens import parse_sids

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class RankedOutput(BaseModel):
    reasoning: str
    ranking: list[str]


def parse_output(text: str, candidates: Sequence[Sequence[int]]) -> list[int] | None:
    """The re-ranked order as candidate indices, or ``None`` if the answer is malformed (no JSON object of the
    expected shape, an entry that is not exactly one SID, an unknown SID, or not every candidate exactly once)."""
    m = _JSON_OBJECT.search(text)
    if m is None:
        return None
    try:
        out = RankedOutput.model_validate(json.loads(m.group(0)))
    except (json.JSONDecodeError, ValidationError):
        return None
    index = {tuple(int(c) for c in sid): i for i, sid in enumerate(candidates)}
    order = []
    for entry in out.ranking:
        sids = parse_sids(entry)
        if len(sids) != 1 or sids[0] not in index:
            return None
        order.append(index[sids[0]])
    if sorted(order) != list(range(len(candidates))):
        return None
    return order


def rank_reward(rank_pre: int, rank_re: int, n_candidates: int) -> float:
    """``(rank_pre − rank_re) / |D|`` with 1-based ranks."""
    if not (1 <= rank_pre <= n_candidates and 1 <= rank_re <= n_candidates):
        raise ValueError(f"ranks must lie in 1..{n_candidates}, got {rank_pre} and {rank_re}")
    return (rank_pre - rank_re) / n_candidates


def rerank_reward(text: str, candidates: Sequence[Sequence[int]], target: int, format_weight: float = 0.1) -> float:
    """Total reward of one answer. ``candidates`` in the pre-ranked order (SID code tuples), ``target`` the index of
    the true item among them (−1 if it was not retrieved: nothing to gain)."""
    order = parse_output(text, candidates)
    if order is None or target < 0:
        return 0.0
    rank_pre = target + 1
    rank_re = order.index(target) + 1
    r_rank = rank_reward(rank_pre, rank_re, len(candidates))
    bonus = format_weight if (r_rank > 0 or rank_pre == 1) else 0.0
    return r_rank + bonus
