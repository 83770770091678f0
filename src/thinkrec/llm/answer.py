"""The re-ranker's answer format and decoding constrained to it.

An answer is the JSON ``{"reasoning": "…", "ranking": ["<sid>", …]}`` that cites every candidate exactly once.
Training targets and constrained generation tokenize it piece by piece with the same pieces, so the token split
between reasoning and output (needed for SFT's λ_r / λ_o weighting) is exact and a forced piece is always the
tokenizer's own encoding.

``RankingConstraint`` is a transformers ``LogitsProcessor``: it forces the JSON scaffold, lets the model write the
reasoning freely (no quotes, backslashes, control characters, special or SID tokens; at most
``max_reasoning_tokens``), then walks a trie of the *remaining* candidates' SID tokens, so the ranking is always a
permutation of the candidates. It reads each row's candidates from the prompt (the SIDs after ``Candidates:``), so it
plugs into any ``generate`` call — our evaluation, the teacher server, and TRL's GRPO rollouts alike.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from thinkrec.llm.sid_tokens import SID_BEGIN, SID_END, format_sid, parse_sids

REASONING_OPEN = ' {"reasoning": "'
RANKING_OPEN = '", "ranking": ['
ENTRY_OPEN = '"'
ENTRY_SEPARATOR = '", "'
ANSWER_CLOSE = '"]}'
CANDIDATES_HEADER = "Candidates:"
ANSWER_HEADER = "Answer:"
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def clean_reasoning(text: str, max_chars: int = 2000) -> str:
    """Reasoning as it may appear inside the JSON string without escapes."""
    return re.sub(r"\s+", " ", _UNSAFE.sub(" ", text)).strip()[:max_chars]


def render_answer(reasoning: str, ranking: Sequence[Sequence[int]]) -> str:
    """The canonical answer text for a reasoning string and a ranking given as SID code tuples."""
    entries = ENTRY_SEPARATOR.join(format_sid(s) for s in ranking)
    return REASONING_OPEN + clean_reasoning(reasoning) + RANKING_OPEN + ENTRY_OPEN + entries + ANSWER_CLOSE


def prompt_candidates(prompt: str) -> list[tuple[int, ...]]:
    """The candidate SIDs listed in a prompt (after the last ``Candidates:`` header, before ``Answer:``)."""
    at = prompt.rfind(CANDIDATES_HEADER)
    if at < 0:
        return []
    body = prompt[at + len(CANDIDATES_HEADER):]
    end = body.find(ANSWER_HEADER)
    return parse_sids(body if end < 0 else body[:end])


class AnswerTokens:
    """Token pieces of the answer format for one tokenizer (cached), and the SID token ids."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        enc = self.encode
        self.reasoning_open = enc(REASONING_OPEN)
        self.ranking_open = enc(RANKING_OPEN)
        self.entry_open = enc(ENTRY_OPEN)
        self.separator = enc(ENTRY_SEPARATOR)
        self.close = enc(ANSWER_CLOSE)
        self.eos = int(tokenizer.eos_token_id)
        self.sid_begin = int(tokenizer.convert_tokens_to_ids(SID_BEGIN))
        self.sid_end = int(tokenizer.convert_tokens_to_ids(SID_END))
        self._free: torch.Tensor | None = None

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"tokenizer encodes {text!r} to nothing")
        return [int(i) for i in ids]

    def sid_ids(self, codes: Sequence[int]) -> list[int]:
        ids = self.tokenizer.convert_tokens_to_ids(re.findall(r"<[^<>]+>", format_sid(codes)))
        if any(i is None or i == self.tokenizer.unk_token_id for i in ids):
            raise ValueError(f"SID {tuple(codes)} has tokens the tokenizer does not know (add_sid_tokens first)")
        return [int(i) for i in ids]

    def answer_ids(self, reasoning: str, ranking: Sequence[Sequence[int]]) -> tuple[list[int], list[bool]]:
        """Token ids of ``render_answer(reasoning, ranking)`` plus EOS, and which of them belong to the reasoning
        (the reasoning text itself; the scaffold and the ranking are output tokens)."""
        ids, is_reasoning = list(self.reasoning_open), [False] * len(self.reasoning_open)
        text = clean_reasoning(reasoning)
        if text:
            r = self.encode(text)
            ids += r
            is_reasoning += [True] * len(r)
        out = list(self.ranking_open) + list(self.entry_open)
        for k, sid in enumerate(ranking):
            if k:
                out += self.separator
            out += self.sid_ids(sid)
        out += self.close + [self.eos]
        return ids + out, is_reasoning + [False] * len(out)

    def free_mask(self, vocab_size: int) -> torch.Tensor:
        """``[V]`` bool: tokens allowed inside the reasoning string."""
        if self._free is None or self._free.numel() != vocab_size:
            n = len(self.tokenizer)
            texts = self.tokenizer.batch_decode([[i] for i in range(n)])
            ok = torch.tensor([bool(t) and _UNSAFE.search(t) is None and "<s_" not in t and "<|sid" not in t
                               for t in texts] + [False] * max(vocab_size - n, 0))[:vocab_size]
            for i in set(self.tokenizer.all_special_ids) | {self.eos}:
                if i < vocab_size:
                    ok[i] = False
            self._free = ok
        return self._free


class _Row:
    __slots__ = ("queue", "then", "phase", "count", "partial", "remaining")

    def __init__(self, candidates: list[list[int]], opening: list[int]):
        self.queue, self.then, self.phase = list(opening), "reason", "forced"
        self.count, self.partial, self.remaining = 0, [], candidates


class RankingConstraint:
    """LogitsProcessor for one ``generate`` call (it keeps per-row state between steps; make a new one per call).
    Rows whose prompt lists no candidates are left unconstrained."""

    def __init__(self, tokens: AnswerTokens, max_reasoning_tokens: int = 64):
        self.t = tokens
        self.max_reasoning_tokens = int(max_reasoning_tokens)
        self.rows: list[_Row | None] | None = None
        self.prompt_len = 0
        end = tokens.ranking_open
        self.end_reasoning, self.after_reasoning = end[0], end[1:]

    def _start(self, input_ids: torch.Tensor) -> None:
        self.prompt_len = input_ids.shape[1]
        tok = self.t.tokenizer
        rows: list[_Row | None] = []
        for ids in input_ids.tolist():
            cands = prompt_candidates(tok.decode(ids, skip_special_tokens=False))
            rows.append(_Row([self.t.sid_ids(c) for c in dict.fromkeys(cands)], self.t.reasoning_open)
                        if cands else None)
        self.rows = rows

    def _advance(self, row: _Row, token: int) -> None:
        if row.queue:
            row.queue.pop(0)
            if not row.queue:
                row.phase = row.then
            return
        if row.phase == "reason":
            if token == self.end_reasoning:
                self._force(row, self.after_reasoning + self.t.entry_open, "sid")
            else:
                row.count += 1
        elif row.phase == "sid":
            row.partial.append(token)
            done = [c for c in row.remaining if c == row.partial]
            if done:
                row.remaining.remove(done[0])
                row.partial = []
                if row.remaining:
                    self._force(row, self.t.separator, "sid")
                else:
                    self._force(row, self.t.close + [self.t.eos], "done")

    @staticmethod
    def _force(row: _Row, ids: list[int], then: str) -> None:
        row.queue, row.then = list(ids), then
        row.phase = "forced" if ids else then

    def _allowed(self, row: _Row) -> list[int] | None:
        """Allowed token ids, or ``None`` for the free reasoning mask."""
        if row.queue:
            return [row.queue[0]]
        if row.phase == "reason":
            return [self.end_reasoning] if row.count >= self.max_reasoning_tokens else None
        if row.phase == "sid":
            k = len(row.partial)
            return sorted({c[k] for c in row.remaining if c[:k] == row.partial})
        return [self.t.eos]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            self._start(input_ids)
        elif input_ids.shape[1] > self.prompt_len:
            last = input_ids[:, -1].tolist()
            for row, token in zip(self.rows, last, strict=True):
                if row is not None:
                    self._advance(row, int(token))
        V = scores.shape[-1]
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for b, row in enumerate(self.rows):
            if row is None:
                mask[b] = True
                continue
            allowed = self._allowed(row)
            if allowed is None:
                mask[b] = self.t.free_mask(V).to(scores.device)
                mask[b, self.end_reasoning] = True
            else:
                mask[b, allowed] = True
        return scores.masked_fill(~mask, float("-inf"))


@contextmanager
def merged_adapter(model: Any) -> Iterator[None]:
    """LoRA (and trainable-token rows) merged into the base weights for the block, then put back exactly.

    Unmerged LoRA + trainable-token rows rebuild the 262k-row embedding on every decoding step (≈ 4× slower
    generation on CPU); merging for the call and unmerging after gives the same outputs at plain speed. Unmerging
    subtracts B·A again, which leaves the base weights off by rounding (W + BA − BA ≠ W) and so makes every later
    step depend on how many generations came before (a resumed run would differ from an uninterrupted one); the
    LoRA layers' base weights are copied before the merge and put back exactly."""
    merge = hasattr(model, "merge_adapter") and not getattr(model, "_thinkrec_merged", False)
    if merge:
        with torch.no_grad():
            bases = _lora_base_weights(model)
            saved = [w.detach().clone() for w in bases]
            model.merge_adapter()
        model._thinkrec_merged = True
    try:
        yield
    finally:
        if merge:
            with torch.no_grad():
                model.unmerge_adapter()
                for w, copy in zip(bases, saved, strict=True):
                    w.copy_(copy)
            model._thinkrec_merged = False


def constrained_generate(model: Any, tokens: AnswerTokens, max_reasoning_tokens: int = 64) -> Callable[..., Any]:
    """``model.generate`` with a fresh ``RankingConstraint`` per call (install with ``model.generate = …``)."""
    from transformers import LogitsProcessorList

    original = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(RankingConstraint(tokens, max_reasoning_tokens))
        with merged_adapter(model):
            return original(*args, logits_processor=processors, **kwargs)

    generate.__wrapped__ = original  # type: ignore[attr-defined]
    return generate


@torch.inference_mode()
def greedy_constrained(model: Any, tokens: AnswerTokens, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       max_new_tokens: int, max_reasoning_tokens: int = 64) -> torch.Tensor:
    """The greedy answers ``constrained_generate`` gives (``[B, new]`` token ids, pad after EOS), computed with
    the output head only where the model has a choice.

    With a 262k-token vocabulary the head is ≈ 60 % of a decoding step, yet most answer tokens are forced (the
    JSON scaffold, ``<|sid_begin|>``/``<|sid_end|>``, separators, and a SID's later codes once its first code picks
    the candidate): those rows skip the head, a row choosing among a few SID tokens multiplies its hidden state with
    those rows of the head only, and only rows writing free reasoning compute the full head. The transformer body
    runs exactly as in ``generate`` (same positions and KV cache), so the argmax over the same allowed set is
    the same token (final-logit soft-capping is monotonic and does not change it)."""
    head_module = model.get_output_embeddings()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder()
    pad = tokens.tokenizer.pad_token_id
    pad = int(pad if pad is not None else tokens.eos)
    device = input_ids.device
    with merged_adapter(model):
        head = head_module.weight
        bias = getattr(head_module, "bias", None)
        free = tokens.free_mask(head.shape[0]).to(device).clone()
        constraint = RankingConstraint(tokens, max_reasoning_tokens)
        constraint._start(input_ids)
        free[constraint.end_reasoning] = True
        rows = constraint.rows
        B = input_ids.shape[0]
        mask = attention_mask.long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # the KV cache's keyword: ``cache`` in transformers ≥ 5.2x, ``past_key_values`` before (deprecated after)
        cache_kw = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        out = body(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        past, hidden = out[cache_kw], out.last_hidden_state[:, -1]
        position = positions[:, -1]
        done = [False] * B
        generated: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            choice = [pad] * B
            full: list[int] = []
            few: list[tuple[int, list[int]]] = []
            for b, row in enumerate(rows):
                if done[b]:
                    continue
                allowed = constraint._allowed(row) if row is not None else None
                if allowed is None:
                    full.append(b)
                elif len(allowed) == 1:
                    choice[b] = allowed[0]
                else:
                    few.append((b, allowed))
            if full:
                logits = F.linear(hidden[full], head, bias)
                constrained = torch.tensor([rows[b] is not None for b in full], device=device)
                logits = logits.masked_fill(constrained[:, None] & ~free, float("-inf"))
                for b, t in zip(full, logits.argmax(-1).tolist(), strict=True):
                    choice[b] = int(t)
            for b, allowed in few:
                ids = torch.tensor(allowed, device=device)
                w = head[ids]
                scores = w @ hidden[b] + (bias[ids] if bias is not None else 0)
                choice[b] = allowed[int(scores.argmax())]
            for b, row in enumerate(rows):
                if not done[b]:
                    if row is not None:
                        constraint._advance(row, choice[b])
                    done[b] = choice[b] == tokens.eos
            step = torch.tensor(choice, device=device)
            generated.append(step)
            if all(done):
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
            position = position + 1
            out = body(input_ids=step[:, None], attention_mask=mask, position_ids=position[:, None],
                       use_cache=True, **{cache_kw: past})
            past, hidden = out[cache_kw], out.last_hidden_state[:, -1]
    return torch.stack(generated, 1) if generated else input_ids.new_zeros(B, 0)


def _lora_base_weights(model: Any) -> list[torch.Tensor]:
    """The base weights that merging LoRA changes in place (trainable-token rows are restored by peft itself)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [m.get_base_layer().weight for m in model.modules() if isinstance(m, LoraLayer)]


def max_answer_tokens(tokens: AnswerTokens, n_candidates: int, sid_len: int, max_reasoning_tokens: int) -> int:
    """An upper bound on the answer length in tokens (for ``max_new_tokens``)."""
    scaffold = len(tokens.reasoning_open) + len(tokens.ranking_open) + len(tokens.entry_open) + len(tokens.close) + 1
    return scaffold + max_reasoning_tokens + n_candidates * (sid_len + 2) + (n_candidates - 1) * len(tokens.separator)
