"""Semantic IDs as LLM tokens: ``<|sid_begin|><s_a_97><s_b_168><s_c_3><|sid_end|>`` (one token per level-code).

Level ``l`` uses the letter ``a + l``; the vocabulary holds every (level, code) of the SID map's radix, so the
tokenizer grows by ``2 + Σ radix`` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
_CODE = re.compile(r"<s_([a-z])_(\d+)>")
_SID = re.compile(re.escape(SID_BEGIN) + r"((?:<s_[a-z]_\d+>)+)" + re.escape(SID_END))


def _letter(level: int) -> str:
    if not 0 <= level < 26:
        raise ValueError(f"SID level {level} out of range (at most 26 levels)")
    return chr(ord("a") + level)


def sid_vocabulary(radix: Sequence[int]) -> list[str]:
    """Every token to add to the tokenizer: begin/end markers, then level by level, code by code."""
    return [SID_BEGIN, SID_END] + [f"<s_{_letter(lv)}_{c}>" for lv, r in enumerate(radix) for c in range(int(r))]


def format_sid(codes: Sequence[int]) -> str:
    return SID_BEGIN + "".join(f"<s_{_letter(lv)}_{int(c)}>" for lv, c in enumerate(codes)) + SID_END


def parse_sids(text: str) -> list[tuple[int, ...]]:
    """Every well-formed SID in ``text`` (levels in order a, b, c, …), as code tuples, in order of appearance."""
    out = []
    for m in _SID.finditer(text):
        parts = _CODE.findall(m.group(1))
        if [p[0] for p in parts] == [_letter(i) for i in range(len(parts))]:
            out.append(tuple(int(p[1]) for p in parts))
    return out
