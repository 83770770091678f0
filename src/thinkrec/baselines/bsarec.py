"""BSARec (Shin et al., AAAI 2024, "An Attentive Inductive Bias for Sequential Recommendation beyond the
Self-Attention"): SASRec whose every layer mixes self-attention with a learned frequency filter.

Hand-written: the paper's contribution (its layer is 15 lines). Each block computes
``alpha · LayerNorm(x + dropout(low + beta² · high)) + (1 − alpha) · attention(x)`` and then SASRec's feed-forward;
``low`` keeps the ``freq_c // 2 + 1`` lowest rFFT bins of x along the sequence (the official code's cut: c = 5 keeps
the mean and the two slowest waves), ``high = x − low`` and ``beta`` is learned per hidden dimension (init randn). The
attention path (pre-LN: the official code's is post-LN), embeddings, losses, training
(:func:`~thinkrec.baselines.sasrec.train_sasrec`) and scoring are SASRec's.

Causality (chosen): the paper's rFFT mixes later positions into earlier ones, so with SASRec's every-position loss
each position would see its own target; position t instead filters its own prefix (a causal convolution with the
filter's last-position row), so no output depends on a later token, and the last position — the only one scored —
gets exactly the paper's filter of its layer's left-zero-padded input (the official code trains on prefixes' ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from thinkrec.baselines.sasrec import Block, SASRec, SASRecConfig
from thinkrec.utils.config import spec


@dataclass
class BSARecConfig(SASRecConfig):
    """SASRec's fields plus the paper's two hyper-parameters (defaults: its Beauty setting)."""

    freq_c: int = spec(5, ge=1)  # the filter keeps the freq_c // 2 + 1 lowest rFFT bins
    freq_alpha: float = spec(0.7, ge=0.0, le=1.0)  # weight of the frequency path (1 − alpha: attention)

    def model_class(self) -> type[SASRec]:
        return BSARec


def rfft_low_pass(x: torch.Tensor, c: int) -> torch.Tensor:
    """The paper's low-pass along dim 1: the ``c // 2 + 1`` lowest rFFT bins of x [B, L, d] kept, the rest zeroed."""
    n = x.shape[1]
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    spectrum[:, c // 2 + 1 :] = 0
    return torch.fft.irfft(spectrum, n=n, dim=1, norm="ortho")


def causal_low_pass_kernel(n: int, c: int) -> torch.Tensor:
    """[n, n] lower-triangular Toeplitz T with ``(T @ x)[t]`` = :func:`rfft_low_pass` of the length-n window holding
    ``x[: t + 1]`` right-aligned after zeros, read at its last position; any leading [m, m] block serves length m."""
    lp = rfft_low_pass(torch.eye(n, dtype=torch.float64)[None], c)[0]  # lp[a, b]: weight of position b at a
    row = lp[n - 1]  # the last position's weights: row[n - 1 - j] for the item j steps back
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    return torch.where(lag >= 0, row[(n - 1 - lag).clamp(0, n - 1)], 0.0).float()


class FrequencyLayer(nn.Module):
    """The paper's filter, causal: ``LayerNorm(x + dropout(low + beta² · (x − low)))`` at every position."""

    def __init__(self, d: int, max_len: int, c: int, dropout: float):
        super().__init__()
        # β = sqrt_beta² (official name); shape [d], so param_groups leaves it out of weight decay (as the paper's
        # optimiser does: no decay)
        self.sqrt_beta = nn.Parameter(torch.randn(d))
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("kernel", causal_low_pass_kernel(max_len, c), persistent=False)

    def split(self, x: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) of x [B, L, d] (L ≤ max_len), padded positions as zeros; ``low + high`` is x there."""
        if valid is not None:
            x = x * valid[..., None].to(x.dtype)
        t = x.shape[1]
        low = torch.einsum("ts,bsd->btd", self.kernel[:t, :t].to(x.dtype), x)
        return low, x - low

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        low, high = self.split(x, valid)
        return self.ln(x + self.drop(low + self.sqrt_beta**2 * high))


class BSARecBlock(Block):
    """SASRec's block with the attention residual mixed with the frequency layer before the feed-forward."""

    def __init__(self, d: int, n_heads: int, ffn_mult: int, dropout: float, max_len: int, c: int, alpha: float):
        super().__init__(d, n_heads, ffn_mult, dropout)
        self.freq = FrequencyLayer(d, max_len, c, dropout)
        self.alpha = alpha

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.alpha * self.freq(x, valid) + (1 - self.alpha) * self.attend(x, attn_mask)
        return x + self.drop(self.ffn(self.ln2(x)))


class BSARec(SASRec):
    """SASRec with BSARec blocks; saved and loaded like SASRec (``config.json`` says ``"model": "bsarec"``)."""

    kind: ClassVar[str] = "bsarec"
    config_type: ClassVar[type[SASRecConfig]] = BSARecConfig
    config: BSARecConfig

    def make_block(self) -> nn.Module:
        c = self.config
        return BSARecBlock(c.d_model, c.n_heads, c.ffn_mult, c.dropout, c.max_len, c.freq_c, c.freq_alpha)

    def user_vector(self, tokens: torch.Tensor) -> torch.Tensor:
        # the pipeline pads histories to sasrec.max_len: keep the last max_len columns (the filter's window)
        return super().user_vector(tokens[:, -self.config.max_len :])
