"""Encoder–decoder generative retriever over Semantic IDs: TIGER, and S²GR with stepwise latent thinking.

The encoder reads the user's history, either one token per SID code (``input_mode="code"``, TIGER) or one
token per item whose embedding is the sum of its per-level code embeddings (``input_mode="item"``, 3–4×
shorter). The decoder emits the next item's SID code by code, with one input embedding table and one output
head per level (level l has ``radix[l]`` codes).

With ``thinking=True`` (S²GR) the decoder sequence is ``BOS → t1 → s1 → t2 → s2 …``: before each code the
decoder's last hidden state plus a learned per-level position vector ``p_l`` is fed back as the next input
embedding (a continuous thinking token, no vocabulary entry), and code ``s_l`` is read from the hidden state
at ``t_l``. Semantic supervision (each a switch):

* ``align``: ``t_l`` is classified by cosine against the centres of ``n_clusters`` k-means clusters of level
  l's quantizer codewords (centre = mean of the model's embeddings of the cluster's codes), target = the
  cluster of the true code ``s_l``;
* ``aux_decoder``: a half-depth decoder predicts ``v_g`` from the history, trained with in-batch InfoNCE
  toward the mean of the target SID's code embeddings; ``L_reg = 1 − cos(t_1, sg(v_g))``.

Training is SASRec-like: with a causal encoder, one pass over a user's sequence yields a decoder "group" per
position (history = items up to that position, target = the next item); all groups of a row share the
memory, each seeing only its prefix through the cross-attention mask. The decoder keeps a KV cache, so the
thinking steps cost one token each, in training and in beam search, where beams are groups of one user
sharing the user's cross-attention keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from thinkrec.tokenize.sids import SIDTrie
from thinkrec.utils.config import spec
from thinkrec.utils.nn import normal_init

INPUT_MODES = ("code", "item")


@dataclass
class RetrieverConfig:
    d_model: int = spec(128, ge=1)
    n_enc_layers: int = spec(2, ge=1)
    n_dec_layers: int = spec(2, ge=1)
    n_heads: int = spec(4, ge=1)
    head_dim: int | None = spec(None, ge=1)  # None: d_model / n_heads (T5, the paper's model: 6 heads × 64 at d_model 128)
    ffn: int = spec(512, ge=1)
    dropout: float = spec(0.1, ge=0.0, lt=1.0)
    # Dropout on attention weights: the decoder's cross-attention weights are [users, heads, positions × tokens,
    # history] — drawing their mask was a fifth of a training step on CPU; None = ``dropout``.
    attn_dropout: float | None = spec(0.0, ge=0.0, lt=1.0)
    max_len: int = spec(50, ge=1)  # history items kept (the last ones)
    input_mode: str = spec("item", choices=INPUT_MODES)  # "code": one token per SID code (TIGER) | "item": one token per item
    item_embedding: bool = True  # item mode: add a learned per-item embedding to the summed code embeddings
    causal_encoder: bool = True  # True: every position of a sequence is a training target in one pass
    state_bos: bool = True  # decoder's first input = BOS + projection of the encoder state at the last history item
    constrained_softmax: bool = True  # normalise each level over the trie's valid children (training and decoding)
    item_loss_weight: float = spec(1.0, ge=0.0)  # >0: auxiliary full-softmax next-item CE on the encoder state (tied item table)
    # >0: that CE is a sampled softmax against this many uniform negatives shared by the batch, so a step costs the
    # same at any catalogue size (a full softmax over 1M items does not fit a step); 0 = full softmax
    item_negatives: int = spec(0, ge=0)
    # the item embedding gets sparse gradients (only looked-up rows; with thinkrec.utils.optim.LazyAdamW a step
    # then costs the same at any catalogue size); needs a sampled item head or none
    sparse_item_grad: bool = False
    tie_heads: bool = False  # output head of level l shares weights with the decoder's level-l code embeddings
    codebook_init: bool = False  # initialise code embeddings from the quantizer's codewords (PCA to d_model)
    # S²GR
    thinking: bool = False  # latent thinking token before each code
    # The fed-back hidden state leaves the final LayerNorm with per-dim scale ~1, ~50× the code embeddings'
    # (std 0.02 at init); a learned scalar, initialised to the embeddings' scale, keeps a thinking token's input on
    # the scale of the tokens around it (T5, the paper's backbone, has both on one scale). None: no scaling
    # (the default: 0.02 gave no gain on Beauty, BENCHMARKS.md).
    think_scale_init: float | None = spec(None, gt=0.0)
    align: bool = True  # cluster-alignment loss on thinking tokens
    n_clusters: int = spec(16, ge=1)  # K_c per level
    align_tau: float = spec(0.1, gt=0.0)
    align_weight: float = spec(1.0, ge=0.0)
    aux_decoder: bool = True  # half-depth decoder, InfoNCE, L_reg on t_1
    nce_tau: float = spec(0.1, gt=0.0)
    nce_weight: float = spec(1.0, ge=0.0)
    reg_weight: float = spec(0.1, ge=0.0)  # λ

    def _checks(self) -> list[tuple[str, str]]:
        out = []
        if self.head_dim is None and self.d_model % self.n_heads:
            out.append(("n_heads", f"must divide d_model {self.d_model} unless head_dim is set (got {self.n_heads})"))
        if self.sparse_item_grad and self.item_loss_weight > 0 and not self.item_negatives:
            out.append(("sparse_item_grad", "needs item_negatives > 0 (a full-softmax item head reads every row)"))
        return out

    @classmethod
    def paper(cls, **overrides: Any) -> RetrieverConfig:
        """TIGER's T5 size: 4 + 4 layers, d_model 128, 6 heads × 64, FFN 1024, dropout 0.1, code tokens."""
        base = dict(n_enc_layers=4, n_dec_layers=4, n_heads=6, head_dim=64, ffn=1024, dropout=0.1, input_mode="code")
        return cls(**{**base, **overrides})

    @property
    def s2gr_losses(self) -> bool:
        return self.thinking and (self.align or self.aux_decoder)


class Attention(nn.Module):
    """Multi-head attention on SDPA; keys/values computed separately so they can be cached or shared."""

    def __init__(self, d: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.h, self.dh = n_heads, head_dim
        inner = n_heads * head_dim
        self.q = nn.Linear(d, inner)
        self.kv = nn.Linear(d, 2 * inner)
        self.proj = nn.Linear(inner, d)
        self.attn_dropout = dropout

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ctx [N, S, d]`` → keys, values ``[N, h, S, dh]``."""
        n, s, _ = ctx.shape
        k, v = self.kv(ctx).view(n, s, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        n, t, _ = x.shape
        q = self.q(x).view(n, t, self.h, self.dh).transpose(1, 2)
        drop = self.attn_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=drop)
        return self.proj(a.transpose(1, 2).reshape(n, t, self.h * self.dh))


def _ffn(d: int, ffn: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, head_dim: int, ffn: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, head_dim, attn_dropout)
        self.ffn = _ffn(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        k, v = self.attn.keys_values(h)
        x = x + self.drop(self.attn.attend(h, k, v, mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class DecoderBlock(nn.Module):
    """Pre-LN decoder block over groups: ``x [B, G, t, d]``; self-attention within each group (cached),
    cross-attention from all of a row's groups to the row's memory at once."""

    def __init__(self, d: int, n_heads: int, head_dim: int, ffn: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, n_heads, head_dim, attn_dropout)
        self.cross_attn = Attention(d, n_heads, head_dim, attn_dropout)
        self.ffn = _ffn(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, g, t, d = x.shape
        h = self.ln1(x).reshape(b * g, t, d)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        past = k.shape[2] - t
        mask = None
        if t > 1:  # new token i sees the cache and new tokens ≤ i
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        x = x + self.drop(self.self_attn.attend(h, k, v, mask).view(b, g, t, d))
        h = self.ln2(x).reshape(b, g * t, d)
        s = cross_mask.shape[-1]
        cm = cross_mask[:, :, :, None, :].expand(b, 1, g, t, s).reshape(b, 1, g * t, s)
        x = x + self.drop(self.cross_attn.attend(h, *cross_kv, cm).view(b, g, t, d))
        return x + self.drop(self.ffn(self.ln3(x))), (k, v)


@dataclass
class DecoderState:
    """Incremental decoding state of ``B`` rows × ``G`` groups (beams, or target positions in training)."""

    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [B, h, S, dh]
    cross_mask: torch.Tensor  # [B, 1, G or 1, S] bool
    cache: list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer, [B·G, h, t, dh]
    batch: int
    groups: int
    pos: int = 0

    def reorder(self, parent: torch.Tensor) -> None:
        """Keep groups ``parent [B, G]`` (indices within each row) — beam search's survivor selection."""
        b, g = self.batch, self.groups
        flat = (parent + torch.arange(b, device=parent.device)[:, None] * g).reshape(-1)
        self.cache = [None if c is None else (c[0][flat], c[1][flat]) for c in self.cache]
        if self.cross_mask.shape[2] > 1:
            self.cross_mask = self.cross_mask.gather(2, parent[:, None, :, None].expand(-1, 1, -1, self.cross_mask.shape[3]))


@dataclass
class TargetOutputs:
    """Teacher-forced decoder outputs for ``N`` selected groups."""

    logits: list[torch.Tensor]  # per level [N, radix[l]]
    thoughts: list[torch.Tensor]  # per level [N, d] (thinking only)
    aux: torch.Tensor | None  # [N, d], auxiliary decoder output v_g


class GenerativeRetriever(nn.Module):
    """Encoder–decoder Transformer generating the next item's SID.

    Args:
        item_codes: ``[n_items, L]`` SID of every item (``SIDMap.codes``); kept as a buffer so the model maps
            history tokens to codes itself.
        radix: codes per SID level (``SIDMap.radix``).
        config: :class:`RetrieverConfig`.
        code_clusters: optional ``[L, max_radix]`` cluster id of every code per level (−1: level without
            clusters), from :func:`thinkrec.retrieval.clusters.code_clusters`; needed by ``align``.

    Histories are item tokens ``[B, T]`` (item + 1, 0 = padding, left-padded), as in ``thinkrec.eval``.
    """

    def __init__(
        self,
        item_codes: torch.Tensor,
        radix: list[int],
        config: RetrieverConfig | None = None,
        code_clusters: torch.Tensor | None = None,
    ):
        super().__init__()
        config = config or RetrieverConfig()
        if config.input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input_mode {config.input_mode!r}; use one of {INPUT_MODES}")
        head_dim = config.head_dim or config.d_model // config.n_heads
        if config.head_dim is None and config.d_model % config.n_heads:
            raise ValueError("d_model must be divisible by n_heads (or set head_dim)")
        item_codes = torch.as_tensor(item_codes, dtype=torch.int64)
        self.radix = [int(r) for r in radix]
        self.n_levels = L = len(self.radix)
        if item_codes.ndim != 2 or item_codes.shape[1] != L:
            raise ValueError(f"item_codes must be [n_items, {L}], got {list(item_codes.shape)}")
        self.n_items = int(item_codes.shape[0])
        self.config = config
        d = config.d_model
        self.register_buffer("item_codes", item_codes.clone())
        # −1 everywhere = no clusters; filled by the caller (or from a checkpoint) for align.
        clusters = torch.full((L, max(self.radix)), -1, dtype=torch.int64)
        if code_clusters is not None:
            clusters[:, : code_clusters.shape[1]] = torch.as_tensor(code_clusters, dtype=torch.int64)
        self.register_buffer("code_clusters", clusters)
        # Encoder.
        self.enc_code_emb = nn.ModuleList(nn.Embedding(k, d) for k in self.radix)
        self.enc_pos_emb = nn.Embedding(config.max_len, d)
        self.enc_level_emb = nn.Embedding(L, d)  # code mode only
        self.item_emb = nn.Embedding(self.n_items, d, sparse=config.sparse_item_grad) if config.item_embedding else None
        attn_drop = config.dropout if config.attn_dropout is None else config.attn_dropout
        args = (d, config.n_heads, head_dim, config.ffn, config.dropout, attn_drop)
        self.enc_blocks = nn.ModuleList(EncoderBlock(*args) for _ in range(config.n_enc_layers))
        self.enc_ln = nn.LayerNorm(d)
        # Decoder.
        self.bos = nn.Parameter(torch.zeros(d))
        self.state_proj = nn.Linear(d, d) if config.state_bos else None
        self.dec_code_emb = nn.ModuleList(nn.Embedding(k, d) for k in self.radix)
        self.dec_pos_emb = nn.Embedding(2 * L + 1, d)
        self.think_pos = nn.Parameter(torch.zeros(L, d))  # p_l
        self.think_scale = nn.Parameter(torch.tensor(1.0 if config.think_scale_init is None else float(config.think_scale_init)),
                                        requires_grad=config.think_scale_init is not None)
        self.dec_blocks = nn.ModuleList(DecoderBlock(*args) for _ in range(config.n_dec_layers))
        self.dec_ln = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in self.radix)
        self.drop = nn.Dropout(config.dropout)
        # S²GR auxiliary light decoder (half depth).
        if config.thinking and config.aux_decoder:
            self.aux_query = nn.Parameter(torch.zeros(d))
            self.aux_blocks = nn.ModuleList(DecoderBlock(*args) for _ in range(max(1, config.n_dec_layers // 2)))
            self.aux_ln = nn.LayerNorm(d)
        self.apply(normal_init)
        if config.tie_heads:
            for head, emb in zip(self.heads, self.dec_code_emb, strict=True):
                head.weight = emb.weight
        for p in (self.bos, self.think_pos, *([self.aux_query] if hasattr(self, "aux_query") else [])):
            nn.init.normal_(p, std=0.02)

    @torch.no_grad()
    def init_code_embeddings(self, codebooks: list) -> None:
        """Initialise the encoder's and decoder's code embeddings from the quantizer's codewords.

        All levels' codewords are projected on their top ``d_model`` principal directions (one shared
        projection, so residual levels keep their smaller scale) and rescaled to the default init's std, so
        codes that mean similar things start close together. Levels without a codebook keep their init.
        """
        books = [torch.as_tensor(b, dtype=torch.float32) for b in codebooks[: self.n_levels]]
        stacked = torch.cat(books)
        mean = stacked.mean(0)
        k = min(self.config.d_model, stacked.shape[0], stacked.shape[1])
        _, _, v = torch.linalg.svd(stacked - mean, full_matrices=False)
        proj = v[:k].T  # [D, k]
        scale = 0.02 / ((stacked - mean) @ proj).std().clamp(min=1e-8)
        for lv, book in enumerate(books):
            if book.shape[0] != self.radix[lv]:
                raise ValueError(f"level {lv}: {book.shape[0]} codewords for {self.radix[lv]} codes")
            x = ((book - mean) @ proj) * scale
            for table in (self.enc_code_emb[lv], self.dec_code_emb[lv]):
                table.weight.zero_()
                table.weight[:, :k] = x.to(table.weight.device)

    def trie(self) -> SIDTrie:
        """Prefix trie of the model's item SIDs (built once, on the model's device)."""
        dev = self.item_codes.device
        if getattr(self, "_trie", None) is None or self._trie.device != dev:
            self._trie = SIDTrie(self.item_codes.cpu().numpy(), self.radix, dev)
        return self._trie

    def level_log_probs(self, level: int, logits: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of level-``level`` codes ``[N, K]`` after ``prefix [N, level]``: with
        ``constrained_softmax`` normalised over the valid children only (invalid codes −inf)."""
        logits = logits.float()
        if not self.config.constrained_softmax:
            return torch.log_softmax(logits, -1)
        allowed = self.trie().allowed_next(prefix)
        allowed[:, 0] |= ~allowed.any(1)  # a prefix with no valid child (dead beam) stays finite
        return torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)

    @property
    def thinking(self) -> bool:
        return self.config.thinking

    def has_clusters(self, level: int) -> bool:
        return bool((self.code_clusters[level] >= 0).any())

    # ------------------------------------------------------------------ encoder
    def encode(self, tokens: torch.Tensor, causal: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode history tokens ``[B, T]`` (item + 1, 0 = pad; the last ``max_len`` are kept).

        Returns ``(memory [B, S, d], memory_mask [B, S] bool, key_item [S])`` where ``S = T`` ("item") or
        ``T·L`` ("code") and ``key_item`` is the history position each memory token belongs to (for causal
        per-position cross-attention in training). ``causal`` defaults to the config.
        """
        causal = self.config.causal_encoder if causal is None else causal
        tokens = tokens[:, -self.config.max_len :]
        b, t = tokens.shape
        L, dev = self.n_levels, tokens.device
        valid = tokens > 0
        items = (tokens - 1).clamp(min=0)
        codes = self.item_codes[items]  # [B, T, L]
        per_level = torch.stack([self.enc_code_emb[lv](codes[..., lv]) for lv in range(L)], 2)
        # Positions count back from the window's end (SASRec's convention with left padding): a user's most
        # recent training target and its test history both end at position max_len − 1.
        pos = self.enc_pos_emb(torch.arange(self.config.max_len - t, self.config.max_len, device=dev))[None].expand(b, -1, -1)
        key_item = torch.arange(t, device=dev)
        if self.config.input_mode == "item":
            x = per_level.sum(2) + pos
            if self.item_emb is not None:
                x = x + self.item_emb(items)
            mask = valid
        else:
            x = (per_level + self.enc_level_emb.weight + pos[:, :, None]).reshape(b, t * L, -1)
            mask = valid[..., None].expand(b, t, L).reshape(b, t * L)
            key_item = key_item.repeat_interleave(L)
        s = x.shape[1]
        attn = mask[:, None, None, :]
        if causal:
            attn = attn & (key_item[None, :] <= key_item[:, None])[None, None]
        attn = attn | torch.eye(s, dtype=torch.bool, device=dev)  # every query sees itself: no empty rows
        x = self.drop(x * valid.repeat_interleave(s // t, 1)[..., None])
        for blk in self.enc_blocks:
            x = blk(x, attn)
        return self.enc_ln(x), mask, key_item

    # ------------------------------------------------------------------ decoder
    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor, groups: int = 1,
              group_mask: torch.Tensor | None = None, blocks: nn.ModuleList | None = None) -> DecoderState:
        """Decoding state for ``groups`` groups per row; ``group_mask [B, G, S]`` restricts what each group
        sees of the memory (default: all real tokens). A row with no real token sees its first token."""
        blocks = self.dec_blocks if blocks is None else blocks
        mm = memory_mask.clone()
        mm[:, 0] |= ~mm.any(1)
        cross = mm[:, None, None, :] if group_mask is None else group_mask[:, None]
        if group_mask is not None:
            cross = cross.clone()
            cross[..., 0] |= ~cross.any(-1)
        kv = [blk.cross_attn.keys_values(memory) for blk in blocks]
        return DecoderState(kv, cross, [None] * len(blocks), memory.shape[0], groups)

    def step(self, state: DecoderState, x: torch.Tensor, blocks: nn.ModuleList | None = None,
             ln: nn.Module | None = None) -> torch.Tensor:
        """Feed new input embeddings ``x [B, G, t, d]``; returns their hidden states ``[B, G, t, d]``."""
        blocks = self.dec_blocks if blocks is None else blocks
        t = x.shape[2]
        pos = torch.arange(state.pos, state.pos + t, device=x.device)
        x = self.drop(x + self.dec_pos_emb(pos)[:, :])
        for i, blk in enumerate(blocks):
            x, state.cache[i] = blk(x, state.cache[i], state.cross_kv[i], state.cross_mask)
        state.pos += t
        return (self.dec_ln if ln is None else ln)(x)

    def bos_input(self, b: int, g: int, user_state: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's first input ``[B, G, 1, d]``: BOS, plus (``state_bos``) a projection of the user's state
        ``[B, G, d]`` — the encoder output at the group's last history item, as SASRec would read it."""
        if self.state_proj is None or user_state is None:
            return self.bos.expand(b, g, 1, -1)
        return (self.bos + self.state_proj(user_state))[:, :, None]

    def last_state(self, memory: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output at the last token of history item ``positions [G]`` (default: the last item) → ``[B, G, d]``."""
        if positions is None:
            return memory[:, -1:]
        per_item = self.n_levels if self.config.input_mode == "code" else 1
        return memory[:, positions * per_item + per_item - 1]

    def code_input(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings ``[B, G, 1, d]`` of level-``level`` codes ``[B, G]``."""
        return self.dec_code_emb[level](codes)[:, :, None]

    def thought(self, level: int, hidden: torch.Tensor) -> torch.Tensor:
        """Thinking token ``t_level`` from a last hidden state ``[..., d]``: (scaled) hidden + p_level."""
        return self.think_scale * hidden + self.think_pos[level]

    def forward_targets(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        targets: torch.Tensor,
        select: torch.Tensor,
        group_mask: torch.Tensor | None = None,
        user_state: torch.Tensor | None = None,
    ) -> TargetOutputs:
        """Teacher-forced outputs for target SIDs ``targets [B, G, L]`` at selected groups ``select [B, G]``;
        ``user_state [B, G, d]`` defaults to the last memory token for every group."""
        b, g, L = targets.shape
        if user_state is None:
            user_state = self.last_state(memory).expand(b, g, -1)
        state = self.start(memory, memory_mask, g, group_mask)
        logits, thoughts = [], []
        if not self.thinking:  # one pass over BOS, s1, …, s_{L−1}
            seq = torch.cat([self.bos_input(b, g, user_state), *(self.code_input(lv, targets[..., lv]) for lv in range(L - 1))], 2)
            h = self.step(state, seq)[select]  # [N, L, d]
            logits = [self.heads[lv](h[:, lv]) for lv in range(L)]
        else:  # BOS → t1; then [t_l, s_l] per level: logits from t_l, t_{l+1} from s_l
            h = self.step(state, self.bos_input(b, g, user_state))[:, :, 0]
            t_l = self.thought(0, h)
            for lv in range(L):
                x = t_l[:, :, None]
                if lv < L - 1:
                    x = torch.cat([x, self.code_input(lv, targets[..., lv])], 2)
                h = self.step(state, x)
                thoughts.append(t_l[select])
                logits.append(self.heads[lv](h[:, :, 0][select]))
                if lv < L - 1:
                    t_l = self.thought(lv + 1, h[:, :, 1])
        aux = None
        if self.thinking and self.config.aux_decoder:
            st = self.start(memory, memory_mask, g, group_mask, self.aux_blocks)
            q = self.aux_query.expand(b, g, 1, -1)
            if self.state_proj is not None:
                q = q + self.state_proj(user_state)[:, :, None]
            aux = self.step(st, q, self.aux_blocks, self.aux_ln)[:, :, 0][select]
        return TargetOutputs(logits, thoughts, aux)

    def item_table(self) -> torch.Tensor:
        """Every item's encoder input embedding (summed code embeddings, plus the item embedding) ``[n_items, d]``.

        Without autograd the table is cached until a weight it reads changes (in-place updates bump a tensor's
        version): re-scoring beams would otherwise rebuild 12k × d rows per request batch."""
        if torch.is_grad_enabled() and self.training:
            return self._build_item_table()
        weights = [e.weight for e in self.enc_code_emb] + ([self.item_emb.weight] if self.item_emb is not None else [])
        # inference tensors (loaded under inference_mode) cannot change in place and track no version
        key = tuple((id(w), 0 if w.is_inference() else w._version, w.device) for w in weights)
        cache = getattr(self, "_table_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, self._build_item_table())
            self._table_cache = cache
        return cache[1]

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """Rows of :meth:`item_table` for ``items`` (any shape) without building the whole table."""
        x = sum(self.enc_code_emb[lv](self.item_codes[items, lv]) for lv in range(self.n_levels))
        return x + self.item_emb(items) if self.item_emb is not None else x

    def _build_item_table(self) -> torch.Tensor:
        x = sum(self.enc_code_emb[lv](self.item_codes[:, lv]) for lv in range(self.n_levels))
        return x + self.item_emb.weight if self.item_emb is not None else x

    def item_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """The item head: encoder state at the last history item · item table, ``[B, n_items]`` logits (what the
        auxiliary next-item loss trains; used to re-score beams)."""
        memory, _, _ = self.encode(tokens)
        return self.last_state(memory)[:, 0] @ self.item_table().T

    def item_scores_from_state(self, user_state: torch.Tensor) -> torch.Tensor:
        """:meth:`item_scores` from the encoder state at the last history item ``[B, d]`` (e.g. the beam search's)."""
        return user_state @ self.item_table().T

    def item_logits(self, user_state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The item head's logits of given items only: ``user_state [B, d]`` · table rows ``items [B, K]`` → ``[B, K]``.

        Per user this costs ``K × d``, whatever the catalogue size (re-scoring beams must not grow with it)."""
        rows = F.embedding(items.clamp(min=0).to(user_state.device), self.item_table())  # [B, K, d]
        return torch.bmm(rows, user_state[:, :, None].to(rows.dtype))[..., 0]

    # ------------------------------------------------------------------ losses
    def _sampled_item_loss(self, states: torch.Tensor, targets: torch.Tensor, n_negatives: int) -> torch.Tensor:
        """Sampled-softmax CE of the item head: each target against ``n_negatives`` uniform draws shared by the
        batch (a draw equal to the row's own target is masked; uniform draws need no logQ correction)."""
        neg = torch.randint(self.item_codes.shape[0], (n_negatives,), device=states.device)
        pos_logit = (states * self.item_rows(targets)).sum(-1, keepdim=True)
        neg_logit = (states @ self.item_rows(neg).T).masked_fill(neg[None] == targets[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], 1)
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device))

    def cluster_centres(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(centres [K_c, d], cluster of each code [radix])``: mean code embedding per cluster."""
        assign = self.code_clusters[level, : self.radix[level]]
        n_c = int(assign.max()) + 1
        member = F.one_hot(assign.clamp(min=0), n_c).float() * (assign >= 0)[:, None]
        centres = (member.T @ self.dec_code_emb[level].weight) / member.sum(0).clamp(min=1)[:, None]
        return centres, assign

    def losses(self, tokens: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses for histories ``tokens [B, T]`` and next-item targets.

        Causal encoder: ``targets [B, T]`` item tokens (0 = no target), position g's target follows history
        ``tokens[:, :g+1]``. Bidirectional: ``targets [B]`` item tokens after the whole history.
        Returns ``{"loss", "rec", ["align", "nce", "reg"]}``.
        """
        cfg = self.config
        causal = targets.ndim == 2
        memory, mmask, key_item = self.encode(tokens, causal=causal)
        t = tokens.shape[1]
        if causal:
            targets = targets[:, -t:]
            select = targets > 0
            positions = torch.arange(t, device=tokens.device)
            gm = mmask[:, None, :] & (key_item[None, None, :] <= positions[None, :, None])
            user_state = self.last_state(memory, positions)
        else:
            targets = targets[:, None]
            select = targets > 0
            gm, user_state = None, None
        tgt_items = (targets - 1).clamp(min=0)
        codes = self.item_codes[tgt_items]  # [B, G, L]
        out = self.forward_targets(memory, mmask, codes, select, gm, user_state)
        sel_codes, sel_items = codes[select], tgt_items[select]  # [N, L], [N]
        nll = [F.nll_loss(self.level_log_probs(lv, lg, sel_codes[:, :lv]), sel_codes[:, lv]) for lv, lg in enumerate(out.logits)]
        rec = torch.stack(nll).mean()
        parts = {"rec": rec}
        for lv, v in enumerate(nll):
            parts[f"rec_l{lv + 1}"] = v.detach()
        loss = rec
        if cfg.item_loss_weight > 0:
            states = (user_state if user_state is not None else self.last_state(memory))[select]
            if cfg.item_negatives:
                parts["item"] = self._sampled_item_loss(states, sel_items, cfg.item_negatives)
            else:
                parts["item"] = F.cross_entropy(states @ self.item_table().T, sel_items)
            loss = loss + cfg.item_loss_weight * parts["item"]
        if self.thinking and cfg.align:
            terms = []
            for lv, t_l in enumerate(out.thoughts):
                if not self.has_clusters(lv):
                    continue
                centres, assign = self.cluster_centres(lv)
                sim = F.normalize(t_l, dim=-1) @ F.normalize(centres, dim=-1).T / cfg.align_tau
                terms.append(F.cross_entropy(sim, assign[sel_codes[:, lv]]))
            if terms:
                parts["align"] = torch.stack(terms).mean()
                loss = loss + cfg.align_weight * parts["align"]
        if out.aux is not None:
            v_bar = torch.stack([self.dec_code_emb[lv](sel_codes[:, lv]) for lv in range(self.n_levels)], 0).mean(0).detach()
            sim = F.normalize(out.aux, dim=-1) @ F.normalize(v_bar, dim=-1).T / cfg.nce_tau
            same = sel_items[:, None] == sel_items[None, :]
            sim = sim.masked_fill(same & ~torch.eye(len(sel_items), dtype=torch.bool, device=sim.device), float("-inf"))
            parts["nce"] = F.cross_entropy(sim, torch.arange(len(sel_items), device=sim.device))
            parts["reg"] = 1.0 - F.cosine_similarity(out.thoughts[0], out.aux.detach(), dim=-1).mean()
            loss = loss + cfg.nce_weight * parts["nce"] + cfg.reg_weight * parts["reg"]
        parts["loss"] = loss
        return parts
