"""Prompts: the catalogue as the LLM sees it, re-ranking requests, and the alignment (mid-stage) data.

Prompts are completion-style (the packaged Gemma 3 270M is a base model, not a chat model); teachers that are chat
models receive the same text as the user message. Items appear as their SID tokens, followed by a short title when
``with_titles`` is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thinkrec.llm.answer import ANSWER_HEADER, CANDIDATES_HEADER
from thinkrec.llm.sid_tokens import format_sid

INSTRUCTION = ("Rank all candidates by how likely the user buys each next. Reply with JSON: "
               '{"reasoning": "<why>", "ranking": [every candidate SID once, best first]}.')

RANKED_NOTE = "The candidates are in the pre-ranker's order, best first; move one only if the history says so."


@dataclass
class Catalogue:
    """What the LLM knows about each item: its SID codes, a title, and a category (dense item ids)."""

    codes: np.ndarray  # [n_items, L] SID codes
    titles: list[str]
    categories: list[str]
    brands: list[str] | None = None

    def __post_init__(self) -> None:
        n = self.codes.shape[0]
        for name in ("titles", "categories"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Catalogue.{name} has {len(getattr(self, name))} entries for {n} items")

    @property
    def radix(self) -> list[int]:
        return [int(x) + 1 for x in self.codes.max(axis=0)]

    def sid(self, item: int) -> str:
        return format_sid(self.codes[item])

    def sid_tuple(self, item: int) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[item])

    def title(self, item: int, max_words: int = 8) -> str:
        words = (self.titles[item] or f"item {item}").replace("\n", " ").split()
        return " ".join(words[:max_words])

    def describe(self, item: int, with_titles: bool = True, max_words: int = 8) -> str:
        return f"{self.sid(item)} {self.title(item, max_words)}" if with_titles else self.sid(item)

    @classmethod
    def from_dataset(cls, dataset, codes: np.ndarray) -> Catalogue:  # noqa: ANN001 - thinkrec.data.Dataset
        items = dataset.items
        titles = [str(t or "") for t in items["title"].to_list()] if "title" in items.columns else [""] * len(items)
        if "categories" in items.columns:
            cats = [(c[-1] if c else "") for c in items["categories"].to_list()]
        else:
            cats = [""] * len(items)
        brands = [str(b or "") for b in items["brand"].to_list()] if "brand" in items.columns else None
        if codes.shape[0] != len(titles):
            raise ValueError(f"SID codes cover {codes.shape[0]} items, the dataset has {len(titles)}")
        return cls(np.asarray(codes), titles, cats, brands)


def rerank_prompt(catalogue: Catalogue, history: Sequence[int], candidates: Sequence[int], n_history: int = 5,
                  with_titles: bool = True, hint: str | None = None, ranked: bool = False,
                  title_words: int = 8) -> str:
    """The re-ranking request: recent history (oldest first), the candidates in the pre-ranked order, the
    instruction, an optional teacher hint (target sampling), and the answer header.

    ``ranked`` numbers the candidates with their pre-rank (1 = the pre-ranker's best) and says so, so keeping
    the given order is the easy answer and every change has to earn its reward (GR2 re-ranks a ranked list)."""
    recent = [int(i) for i in history if int(i) >= 0][-n_history:]
    lines = ["User history (oldest to newest):"]
    lines += [f"- {catalogue.describe(i, with_titles, title_words)}" for i in recent] or ["- (none)"]
    lines.append(CANDIDATES_HEADER)
    if ranked:
        lines += [f"{k}. {catalogue.describe(int(i), with_titles, title_words)}" for k, i in enumerate(candidates, 1)]
        lines.append(RANKED_NOTE)
    else:
        lines += [f"- {catalogue.describe(int(i), with_titles, title_words)}" for i in candidates]
    lines.append(INSTRUCTION)
    if hint:
        lines.append(hint)
    return "\n".join(lines) + "\n" + ANSWER_HEADER


def alignment_examples(catalogue: Catalogue, sequences: Sequence[np.ndarray], n: int, seed: int = 0,
                       plain_text_share: float = 0.1, n_history: int = 5) -> list[dict[str, str]]:
    """GR2's mid-stage tasks, mixed evenly: SID → title, title → SID, history (SIDs) → next SID, and a little plain
    text (item descriptions as ordinary sentences) so the model keeps its language. Targets come only from the
    training sequences passed in."""
    rng = np.random.default_rng(seed)
    n_items = catalogue.codes.shape[0]
    seqs = [np.asarray(s) for s in sequences if len(s) >= 2]
    out: list[dict[str, str]] = []
    for _ in range(n):
        u = rng.random()
        if u < plain_text_share:
            i = int(rng.integers(n_items))
            cat = f" in {catalogue.categories[i]}" if catalogue.categories[i] else ""
            out.append({"prompt": "Product:", "completion": f" {catalogue.title(i, 24)} is sold{cat}."})
            continue
        task = rng.integers(3)
        if task == 2 and seqs:
            s = seqs[int(rng.integers(len(seqs)))]
            t = int(rng.integers(1, len(s)))
            hist = " ".join(catalogue.sid(int(i)) for i in s[max(0, t - n_history):t])
            out.append({"prompt": f"History: {hist}\nNext item:", "completion": f" {catalogue.sid(int(s[t]))}"})
            continue
        i = int(rng.integers(n_items))
        if task == 0:
            out.append({"prompt": f"Item {catalogue.sid(i)} is titled:", "completion": f" {catalogue.title(i, 24)}"})
        else:
            out.append({"prompt": f"Title: {catalogue.title(i, 24)}\nSemantic ID:", "completion": f" {catalogue.sid(i)}"})
    return out
