"""Re-ranking models over one candidate encoder: scorers (DNN, PRM, DLCM), the list evaluator, and the
pointer generator with entropy-gated latent reasoning (EGLR; Seq2Slate and EG-Rerank are its S_max = 0 cases).

Every model reads a batch from :meth:`RerankLists.tensors`: ``history [B, H]`` (item id + 1, 0 pad),
``items [B, L]`` (item id + 1, 0 pad), ``mask``, ``category``, ``features [B, L, F]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from thinkrec.rerank.gbdt import LightGBMRanker, train_lightgbm
from thinkrec.rerank.lists import N_FEATURES
from thinkrec.utils.config import spec
from thinkrec.utils.registry import Registry

NEG = -1e9


@dataclass
class RerankModelConfig:
    d_model: int = spec(64, ge=1)
    n_heads: int = spec(2, ge=1)
    n_layers: int = spec(1, ge=1)
    dropout: float = spec(0.3, ge=0.0, lt=1.0)
    item_embedding: bool = False  # learned item-id embedding (off: category + features only; ids overfit small logs)
    # EGLR (generator only)
    s_max: int = spec(3, ge=0)  # most latent reasoning steps per list position (0 = Seq2Slate / EG-Rerank)
    entropy_threshold: float = spec(1.5, ge=0.0)  # H_th in nats: reason while H_k > H_th ...
    entropy_quantile: float | None = spec(0.6, ge=0.0, le=1.0)  # ... or, when set, H_th is re-calibrated after each training epoch to this
    #   quantile of the pre-reasoning entropies on training lists (reason at the most uncertain 40 % of positions)
    always_reason: bool = False  # ablation: S_max steps at every position, no gate
    dynamic_temperature: bool = True
    temperature: float = spec(1.0, gt=0.0)  # base temperature τ0
    reason_temp_gain: float = spec(1.0, ge=0.0)  # τ_reason = τ0 (1 + gain · H/log n): explore on reasoning steps
    select_temp_gain: float = spec(1.0, ge=0.0)  # τ_select = τ0 / (1 + gain · H/log n): exploit on selection
    max_decode: int = spec(10, ge=1)  # positions decoded step by step; the rest follow the last step's scores
    static_score: bool = False  # generator logits = a static per-candidate score + the state-dependent pointer
    # A reasoning step moves the state by a learned fraction of the GRU's update, starting at 0 (ReZero-style): the
    # untrained reasoning path leaves the pointer exactly as without reasoning, so training can only add to it.
    reason_residual: bool = False
    n_features: int = spec(0, ge=0)  # width of the lists' candidate features (0 = FEATURES; merged candidates add per-source ones)

    def _checks(self) -> list[tuple[str, str]]:
        if self.d_model % self.n_heads:
            return [("n_heads", f"must divide d_model {self.d_model} (got {self.n_heads})")]
        return []


class CandidateEncoder(nn.Module):
    """Candidate vector = item id + category + dense features, crossed with a target-attention user interest."""

    def __init__(self, n_items: int, n_categories: int, cfg: RerankModelConfig):
        super().__init__()
        d = cfg.d_model
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0) if cfg.item_embedding else None
        self.category = nn.Embedding(max(n_categories, 1), d)
        self.feat = nn.Sequential(nn.Linear(cfg.n_features or N_FEATURES, d), nn.GELU(), nn.Linear(d, d))
        self.hist_category = nn.Embedding(max(n_categories, 1), d)
        self.cross = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)
        self.d = d

    def item_vec(self, items: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        v = self.category(category)
        if self.item is not None:
            v = v + self.item(items)
        return v

    def forward(self, batch: dict[str, torch.Tensor], item_category: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> candidate vectors [B, L, d] and the user vector [B, d]."""
        hist = batch["history"]
        hmask = hist > 0
        hvec = self.item_vec(hist, item_category[(hist - 1).clamp_min(0)] * hmask)
        cand = self.item_vec(batch["items"], batch["category"]) + self.feat(batch["features"])
        att = (cand @ hvec.transpose(1, 2)) / math.sqrt(self.d)  # [B, L, H]
        att = att.masked_fill(~hmask[:, None, :], NEG)
        interest = torch.softmax(att, -1) @ hvec * hmask.any(1)[:, None, None]
        user = (hvec * hmask[..., None]).sum(1) / hmask.sum(1, keepdim=True).clamp_min(1)
        x = self.norm(cand + self.cross(torch.cat([cand, interest, cand * interest], -1)))
        return x * batch["mask"][..., None], user


def _encoder(cfg: RerankModelConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)


class RerankBase(nn.Module):
    kind = "scorer"

    def __init__(self, n_items: int, n_categories: int, item_category: torch.Tensor, cfg: RerankModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("item_category", item_category.long(), persistent=False)
        self.encoder = CandidateEncoder(n_items, n_categories, cfg)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(batch, self.item_category)


class DNNScorer(RerankBase):
    """Pointwise: an MLP on each candidate (with its user interest), log-loss."""

    loss_kind = "pointwise"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.cfg.d_model
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, user = self.encode(batch)
        return self.head(torch.cat([x, user[:, None].expand_as(x)], -1)).squeeze(-1)


class _ListTransformer(RerankBase):
    """A Transformer over a displayed list (position embeddings) and a per-position head with the user vector."""

    def __init__(self, *args, max_len: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.cfg.d_model
        self.pos = nn.Embedding(max_len, d)
        self.body = _encoder(self.cfg)
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))

    def _per_position(self, x: torch.Tensor, mask: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        h = self.body(x + self.pos.weight[: x.shape[1]], src_key_padding_mask=~mask)
        return self.head(torch.cat([h, user[:, None].expand_as(h)], -1)).squeeze(-1)


class PRMScorer(_ListTransformer):
    """PRM: a Transformer over the initial list (position embeddings) scores each candidate; listwise loss."""

    loss_kind = "listwise"

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, user = self.encode(batch)
        return self._per_position(x, batch["mask"], user)


class DLCMScorer(RerankBase):
    """DLCM: a GRU reads the initial list bottom-up; each candidate is scored against the list's final state."""

    loss_kind = "listwise"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.cfg.d_model
        self.gru = nn.GRU(d, d, batch_first=True)
        self.out = nn.Linear(d, d)
        self.head = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, 1))

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, user = self.encode(batch)
        lengths = batch["mask"].sum(1)
        # reverse each list's valid part so the GRU ends on the top item (DLCM feeds the list bottom-up)
        L = x.shape[1]
        idx = (lengths[:, None] - 1 - torch.arange(L, device=x.device)[None]).clamp_min(0)
        rev = x.gather(1, idx[..., None].expand_as(x)) * batch["mask"][..., None]
        packed = nn.utils.rnn.pack_padded_sequence(rev, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, last = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)
        o = out.gather(1, idx[..., None].expand_as(out))  # back to the initial order
        s = torch.tanh(self.out(last[-1]))[:, None].expand_as(o)
        return self.head(torch.cat([o, s * x, user[:, None].expand_as(o)], -1)).squeeze(-1)


class ListEvaluator(_ListTransformer):
    """Click model of a whole displayed list: candidate + display position + the other items (Transformer);
    trained with log-loss on logged clicks. ``list_probs`` scores any order of the list."""

    kind = "evaluator"

    def logits(self, batch: dict[str, torch.Tensor], order: torch.Tensor | None = None) -> torch.Tensor:
        """Per displayed position click logits ``[B, L]`` for the list shown in ``order`` (candidate indices)."""
        x, user = self.encode(batch)
        mask = batch["mask"]
        if order is not None:
            x = x.gather(1, order[..., None].expand_as(x))
            mask = mask.gather(1, order)
        return self._per_position(x, mask, user).masked_fill(~mask, NEG)

    def list_probs(self, batch: dict[str, torch.Tensor], order: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(batch, order))


def entropy(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.masked_fill(~avail, NEG), -1)
    return -(logp.exp() * logp).masked_fill(~avail, 0.0).sum(-1)


@dataclass
class DecodeTrace:
    """What happened at each decoded position (for plots and tests)."""

    actions: torch.Tensor  # [B, T] candidate indices
    logp: torch.Tensor  # [B, T] log-prob of the action under the selection temperature
    entropy_first: torch.Tensor  # [B, T] entropy before any reasoning at the position
    entropy_final: torch.Tensor  # [B, T] entropy at selection
    steps: torch.Tensor  # [B, T] reasoning steps used
    temp_select: torch.Tensor  # [B, T]
    temp_reason: torch.Tensor  # [B, T, S_max] (0 where no step)
    step_logits: torch.Tensor  # [B, T, L] untempered selection logits
    rest_logits: torch.Tensor  # [B, L] scores after the last decoded step (orders the undecoded rest)
    unchosen: torch.Tensor  # [B, L] slots not in ``actions``


class PointerGenerator(RerankBase):
    """Builds the list item by item with a GRU state and a pointer over the remaining candidates.

    EGLR: before selecting position k, while H_k > H_th (and fewer than S_max steps were taken) a latent reasoning
    step feeds back a continuous input — the projected state plus a context embedding, the candidates weighted by
    the current selection distribution at the (higher) reasoning temperature — and the candidates are re-scored.
    """

    kind = "generator"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.cfg.d_model
        self.body = _encoder(self.cfg)  # set encoder over the candidates (initial rank as an embedding, as in PRM)
        self.init_pos = nn.Embedding(64, d)
        self.key = nn.Linear(d, d)
        self.query = nn.Linear(d, d)
        self.pointer = nn.Linear(d, 1)  # additive (Ptr-Net) attention: v·tanh(W_k c_j + W_q s)
        self.static = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1)) if self.cfg.static_score else None
        self.value = nn.Linear(d, d)
        self.init_state = nn.Linear(2 * d, d)
        self.cell = nn.GRUCell(d, d)
        self.select_emb = nn.Parameter(torch.zeros(d))
        self.reason_proj = nn.Linear(d, d)
        self.reason_emb = nn.Parameter(torch.randn(max(self.cfg.s_max, 1), d) * 0.02)
        self.reason_gain = nn.Parameter(torch.zeros(d)) if self.cfg.reason_residual else None
        self.register_buffer("h_th", torch.tensor(float(self.cfg.entropy_threshold)))  # entropy gate (nats)

    @torch.no_grad()
    def calibrate_threshold(self, batch: dict[str, torch.Tensor]) -> float:
        """Set H_th to ``entropy_quantile`` of the pre-reasoning entropies of greedy decoding."""
        if self.cfg.entropy_quantile is None or self.cfg.s_max == 0:
            return float(self.h_th)
        tr = self.decode(batch)
        n_avail = batch["mask"].sum(1, keepdim=True) - torch.arange(tr.actions.shape[1], device=tr.actions.device)[None]
        real = n_avail > 1
        if bool(real.any()):
            self.h_th.fill_(float(torch.quantile(tr.entropy_first[real].float(), self.cfg.entropy_quantile)))
        return float(self.h_th)

    def _prepare(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """-> pointer keys, values, static per-candidate scores (or None), initial state."""
        x, user = self.encode(batch)
        L = x.shape[1]
        pos = torch.arange(L, device=x.device).clamp_max(self.init_pos.num_embeddings - 1)
        h = self.body(x + self.init_pos(pos), src_key_padding_mask=~batch["mask"])
        mask = batch["mask"][..., None]
        pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1)
        state = torch.tanh(self.init_state(torch.cat([user, pooled], -1)))
        static = self.static(h).squeeze(-1) if self.static is not None else None
        return self.key(h), self.value(h), static, state

    def _logits(self, keys: torch.Tensor, static: torch.Tensor | None, state: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        logits = self.pointer(torch.tanh(keys + self.query(state)[:, None])).squeeze(-1)
        if static is not None:  # the pointer is then a list-context correction of a per-candidate score
            logits = logits + static
        return logits.masked_fill(~avail, NEG)

    def _temps(self, h: torch.Tensor, avail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        hn = (h / torch.log(avail.sum(-1).clamp_min(2).float())).clamp(0, 1)
        if not cfg.dynamic_temperature:
            return torch.full_like(h, cfg.temperature), torch.full_like(h, cfg.temperature)
        return cfg.temperature * (1 + cfg.reason_temp_gain * hn), cfg.temperature / (1 + cfg.select_temp_gain * hn)

    def _reason(self, keys, values, static, state, avail):
        """Entropy-gated latent reasoning at one position -> (state, logits, H_first, steps, reasoning temps)."""
        cfg = self.cfg
        logits = self._logits(keys, static, state, avail)
        h = entropy(logits, avail)
        h_first = h
        steps = torch.zeros_like(h)
        temps = []
        n_avail = avail.sum(-1)
        threshold = self.h_th
        for s in range(cfg.s_max):
            gate = (n_avail > 1) & (torch.ones_like(h, dtype=torch.bool) if cfg.always_reason else h > threshold)
            if not bool(gate.any()):
                temps.append(torch.zeros_like(h))
                continue
            t_reason, _ = self._temps(h, avail)
            p = torch.softmax(logits / t_reason[:, None], -1)
            context = (p[..., None] * values).sum(1)
            inp = self.reason_proj(state) + context + self.reason_emb[s]
            new = self.cell(inp, state)
            if self.reason_gain is not None:
                new = state + self.reason_gain * (new - state)
            state = torch.where(gate[:, None], new, state)
            logits = self._logits(keys, static, state, avail)
            h = entropy(logits, avail)
            steps = steps + gate.float()
            temps.append(torch.where(gate, t_reason, torch.zeros_like(h)))
        t_temps = torch.stack(temps, -1) if temps else torch.zeros(h.shape + (0,), device=h.device)
        return state, logits, h_first, h, steps, t_temps

    def decode(self, batch: dict[str, torch.Tensor], actions: torch.Tensor | None = None, sample: bool = False,
               generator: torch.Generator | None = None) -> DecodeTrace:
        """Teacher-forced (``actions`` given), sampled (``sample``) or greedy decoding of the first T positions."""
        keys, values, static, state = self._prepare(batch)
        avail = batch["mask"].clone()
        unchosen = torch.ones_like(avail)
        B, L = avail.shape
        T = min(self.cfg.max_decode, L) if actions is None else actions.shape[1]
        rows = torch.arange(B, device=avail.device)
        out = {k: [] for k in ("actions", "logp", "h_first", "h_final", "steps", "t_sel", "t_reason", "logits")}
        for _ in range(T):
            state, logits, h_first, h_final, steps, t_reason = self._reason(keys, values, static, state, avail)
            _, t_sel = self._temps(h_final.detach(), avail)
            logp_all = torch.log_softmax(logits / t_sel[:, None], -1)
            k = len(out["actions"])
            if actions is not None:
                a = actions[:, k]
            elif sample:
                a = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
            else:
                a = logits.argmax(-1)
            has = avail.any(-1)
            a = torch.where(has, a, unchosen.float().argmax(-1))  # past a short list's end: a padding slot, once
            out["actions"].append(a)
            out["logp"].append(torch.where(has, logp_all[rows, a], torch.zeros_like(h_final)))
            out["h_first"].append(h_first)
            out["h_final"].append(h_final)
            out["steps"].append(steps)
            out["t_sel"].append(t_sel)
            out["t_reason"].append(t_reason)
            out["logits"].append(logits)
            state = self.cell(values[rows, a] + self.select_emb, state)
            avail = avail.clone()
            avail[rows, a] = False
            unchosen = unchosen.clone()
            unchosen[rows, a] = False
        rest = self._logits(keys, static, state, avail)
        return DecodeTrace(torch.stack(out["actions"], 1), torch.stack(out["logp"], 1), torch.stack(out["h_first"], 1),
                           torch.stack(out["h_final"], 1), torch.stack(out["steps"], 1), torch.stack(out["t_sel"], 1),
                           torch.stack(out["t_reason"], 1), torch.stack(out["logits"], 1), rest, unchosen)

    def complete(self, batch: dict[str, torch.Tensor], trace: DecodeTrace) -> torch.Tensor:
        """Full permutation ``[B, L]``: the decoded prefix, then the rest by the last step's scores, padding last."""
        L = batch["mask"].shape[1]
        prefix = trace.actions
        rest_scores = torch.where(batch["mask"], trace.rest_logits, torch.full_like(trace.rest_logits, 2 * NEG))
        rest_scores = rest_scores.masked_fill(~trace.unchosen, float("-inf"))
        rest = rest_scores.argsort(dim=-1, descending=True, stable=True)[:, : L - prefix.shape[1]]
        order = torch.cat([prefix, rest], 1)
        # lists shorter than T decode padding after their end: move padding to the end, keep the rest in order
        shown = batch["mask"].gather(1, order)
        key = (~shown).float() * L + torch.arange(L, device=order.device)[None].float()
        return order.gather(1, key.argsort(dim=-1, stable=True))


@dataclass(frozen=True)
class RerankerSpec:
    cls: type[nn.Module] | None  # None: keep the initial order (no model)
    no_reasoning: bool = False  # the generator with S_max = 0
    rl: bool = False  # fine-tuned by RL against the list evaluator after the supervised warm start
    positional: bool = False  # needs a max list length (learned position embeddings)
    # not a torch network built from RerankModelConfig: trainer(train, valid, train_config, log) -> (model, history)
    trainer: Callable[..., tuple[Any, list[dict]]] | None = None


RERANKERS: Registry[RerankerSpec] = Registry("re-ranker")
RERANKERS.register("initial", "the initial order (the logging policy's or the retriever's): the floor", RerankerSpec(None))
RERANKERS.register("dnn", "pointwise MLP scorer over candidate features", RerankerSpec(DNNScorer))
RERANKERS.register("prm", "PRM: Transformer over the whole list, listwise softmax", RerankerSpec(PRMScorer, positional=True))
RERANKERS.register("dlcm", "DLCM: GRU over the list in initial order, listwise softmax", RerankerSpec(DLCMScorer))
RERANKERS.register("seq2slate", "Seq2Slate: pointer generator, supervised only", RerankerSpec(PointerGenerator, no_reasoning=True))
RERANKERS.register("egrerank", "EG-Rerank: pointer generator + RL against the list evaluator",
                   RerankerSpec(PointerGenerator, no_reasoning=True, rl=True))
RERANKERS.register("eglr", "EGLR: EG-Rerank + entropy-gated latent reasoning and dynamic temperature",
                   RerankerSpec(PointerGenerator, rl=True))
RERANKERS.register("lightgbm", "LightGBM LambdaRank over the candidate features (gradient-boosted trees; the industry workhorse)",
                   RerankerSpec(LightGBMRanker, trainer=train_lightgbm))
