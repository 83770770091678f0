"""Encoder–decoder generative retriever over Semantic IDs (TIGER), with optional S²GR latent thinking.

The encoder reads the user's history, either one token per SID code (``input_mode="code"``, TIGER) or one
token per item whose embedding is the sum of its per-level code embeddings (``input_mode="item"``). The
decoder emits the next item's SID code by code, with one output head and one input embedding table per level
(level l has ``radix[l]`` codes).

With ``thinking=True`` (S²GR) the decoder sequence is ``BOS → t1 → s1 → t2 → s2 …``: before each code, the
decoder's last hidden state plus a learned per-level position vector ``p_l`` is fed back as the next input
embedding (a continuous thinking token, no vocabulary entry); the code is predicted from the hidden state at
the thinking position, and thinking positions carry no cross-entropy loss.

The decoder is re-run over its whole (short: ≤ 2L + 1) prefix at every step instead of keeping a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT_MODES = ("code", "item")


@dataclass
class RetrieverConfig:
    d_model: int = 128
    n_enc_layers: int = 2
    n_dec_layers: int = 2
    n_heads: int = 4
    ffn: int = 512
    dropout: float = 0.1
    max_len: int = 50  # history items kept (the last ones)
    input_mode: str = "code"  # "code": one token per SID code (TIGER) | "item": one token per item
    thinking: bool = False  # S²GR latent thinking token before each code


class Attention(nn.Module):
    """Multi-head attention (self or cross) on SDPA."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.attn_dropout = dropout

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, t, d = x.shape
        s = ctx.shape[1]
        h = self.n_heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.proj(a.transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, attn_mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.self_attn = Attention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.cross_attn = Attention(d, n_heads, dropout)
        self.ln3 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cross_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.self_attn(h, h, is_causal=True))
        x = x + self.drop(self.cross_attn(self.ln2(x), memory, cross_mask))
        return x + self.drop(self.ffn(self.ln3(x)))


class GenerativeRetriever(nn.Module):
    """Encoder–decoder Transformer generating the next item's SID.

    Args:
        radix: codes per SID level (``SIDMap.radix``); ``L = len(radix)``.
        config: :class:`RetrieverConfig`.

    Histories are given as SID codes ``[B, T, L]`` with a validity mask ``[B, T]`` (True = real item; padding
    may sit anywhere, its codes are ignored). Only the last ``max_len`` positions are used.
    """

    def __init__(self, radix: Sequence[int], config: RetrieverConfig | None = None):
        super().__init__()
        config = config or RetrieverConfig()
        if config.input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input_mode {config.input_mode!r}; use one of {INPUT_MODES}")
        if config.d_model % config.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.radix = [int(r) for r in radix]
        self.n_levels = len(self.radix)
        self.config = config
        d, L = config.d_model, self.n_levels
        # Encoder inputs.
        self.enc_code_emb = nn.ModuleList(nn.Embedding(k, d) for k in self.radix)
        self.enc_pos_emb = nn.Embedding(config.max_len, d)
        self.enc_level_emb = nn.Embedding(L, d)  # used in "code" mode only
        # Decoder inputs / outputs.
        self.bos = nn.Parameter(torch.zeros(d))
        self.dec_code_emb = nn.ModuleList(nn.Embedding(k, d) for k in self.radix)
        self.dec_pos_emb = nn.Embedding(2 * L + 1, d)
        self.think_pos = nn.Parameter(torch.zeros(L, d))  # p_l of S²GR
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in self.radix)
        self.drop = nn.Dropout(config.dropout)
        args = (d, config.n_heads, config.ffn, config.dropout)
        self.enc_blocks = nn.ModuleList(EncoderBlock(*args) for _ in range(config.n_enc_layers))
        self.dec_blocks = nn.ModuleList(DecoderBlock(*args) for _ in range(config.n_dec_layers))
        self.enc_ln = nn.LayerNorm(d)
        self.dec_ln = nn.LayerNorm(d)
        self.apply(self._init)
        nn.init.normal_(self.bos, std=0.02)
        nn.init.normal_(self.think_pos, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def thinking(self) -> bool:
        return self.config.thinking

    # ------------------------------------------------------------------ encoder
    def encode(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode histories ``[B, T, L]`` (codes) with validity ``mask [B, T]``.

        Returns ``(memory [B, S, d], memory_mask [B, S])`` with ``S = T`` ("item") or ``T·L`` ("code"),
        ``memory_mask`` True at real tokens. A history with no real item keeps one (meaningless) key visible
        so attention stays finite.
        """
        if history.ndim != 3 or history.shape[2] != self.n_levels:
            raise ValueError(f"history must be [B, T, {self.n_levels}], got {list(history.shape)}")
        history, mask = history[:, -self.config.max_len :], mask[:, -self.config.max_len :].bool()
        b, t, L = history.shape
        codes = history.clamp(min=0) * mask[..., None]  # padding → code 0 (masked anyway)
        per_level = torch.stack([self.enc_code_emb[lv](codes[..., lv]) for lv in range(L)], 2)  # [B, T, L, d]
        pos = self.enc_pos_emb(torch.arange(self.config.max_len - t, self.config.max_len, device=history.device))
        if self.config.input_mode == "item":
            x = per_level.sum(2) + pos
            valid = mask
        else:
            x = (per_level + self.enc_level_emb.weight[None, None] + pos[None, :, None]).reshape(b, t * L, -1)
            valid = mask[..., None].expand(b, t, L).reshape(b, t * L)
        valid = valid.clone()
        valid[:, -1] |= ~valid.any(1)
        x = self.drop(x)
        attn_mask = valid[:, None, None, :]
        for blk in self.enc_blocks:
            x = blk(x, attn_mask)
        return self.enc_ln(x), valid

    # ------------------------------------------------------------------ decoder
    def bos_input(self, batch: int) -> torch.Tensor:
        """The decoder's first input ``[batch, 1, d]``."""
        return self.bos.expand(batch, 1, -1)

    def code_input(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings ``[B, 1, d]`` of level-``level`` codes ``[B]``."""
        return self.dec_code_emb[level](codes)[:, None]

    def decode(self, inputs: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Causal decoder over input embeddings ``[B, t, d]`` (positions added here) → hidden ``[B, t, d]``."""
        t = inputs.shape[1]
        x = self.drop(inputs + self.dec_pos_emb(torch.arange(t, device=inputs.device)))
        cross = memory_mask[:, None, None, :].bool()
        for blk in self.dec_blocks:
            x = blk(x, memory, cross)
        return self.dec_ln(x)

    def think(self, level: int, inputs: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """S²GR thinking token for ``level``: last hidden state + ``p_level``, as an input ``[B, 1, d]``."""
        h = self.decode(inputs, memory, memory_mask)[:, -1]
        return (h + self.think_pos[level])[:, None]

    def decode_step(
        self, level: int, inputs: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One code step. ``inputs [B, t, d]`` is the decoder prefix (BOS and, with thinking, earlier
        thinking tokens and codes). With thinking on, a thinking token is appended first.

        Returns ``(logits [B, radix[level]], inputs)`` — the prefix after any thinking token; append the
        chosen code's :meth:`code_input` before the next level.
        """
        if self.thinking:
            inputs = torch.cat([inputs, self.think(level, inputs, memory, memory_mask)], 1)
        h = self.decode(inputs, memory, memory_mask)[:, -1]
        return self.heads[level](h), inputs

    def code_logits(self, memory: torch.Tensor, memory_mask: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits per level (list of ``[B, radix[l]]``) for target SIDs ``[B, L]``."""
        b, L = target.shape
        if self.n_levels != L:
            raise ValueError(f"target must be [B, {self.n_levels}], got {list(target.shape)}")
        inputs = self.bos_input(b)
        if not self.thinking:  # one causal pass: BOS, s1, …, s_{L-1}
            seq = torch.cat([inputs, *(self.code_input(lv, target[:, lv]) for lv in range(L - 1))], 1)
            h = self.decode(seq, memory, memory_mask)
            return [self.heads[lv](h[:, lv]) for lv in range(L)]
        out = []
        for lv in range(L):
            logits, inputs = self.decode_step(lv, inputs, memory, memory_mask)
            out.append(logits)
            if lv < L - 1:
                inputs = torch.cat([inputs, self.code_input(lv, target[:, lv])], 1)
        return out

    def loss(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean (over levels) cross-entropy of the target SIDs ``[B, L]`` given histories ``[B, T, L]``."""
        memory, memory_mask = self.encode(history, mask)
        logits = self.code_logits(memory, memory_mask, target)
        return torch.stack([F.cross_entropy(lg, target[:, lv]) for lv, lg in enumerate(logits)]).mean()
