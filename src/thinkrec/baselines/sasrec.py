"""SASRec (Kang & McAuley, 2018) trained with full-softmax cross-entropy over all items.

CE over the full catalogue (instead of the paper's one sampled negative) is what makes SASRec a strong
baseline. Logits are computed only at non-padded positions: on short-sequence data most of a padded window
is empty, and skipping it makes training ~4x faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from thinkrec.data.batching import shifted_pair
from thinkrec.data.splits import SequenceSplit
from thinkrec.eval.protocol import evaluate_full_ranking
from thinkrec.utils.config import from_dict
from thinkrec.utils.io import atomic_path, read_json, write_json
from thinkrec.utils.nn import normal_init
from thinkrec.utils.training import EarlyStopping, length_bucketed_batches, lr_lambda, param_groups


@dataclass
class SASRecConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.3
    max_len: int = 50
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    epochs: int = 30
    patience: int = 3  # epochs without validation NDCG@10 gain before stopping
    eval_every: int = 1
    eval_batch_size: int = 2048
    warmup_steps: int = 100
    grad_clip: float = 1.0
    length_bucketing: bool = True  # batch users of similar length: far less padding, same targets per epoch
    seed: int = 0


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d, d))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    """Causal Transformer over item tokens (item + 1, 0 = pad), output embeddings tied to the input."""

    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.n_items = n_items
        self.config = config
        d = config.d_model
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.ffn_mult, config.dropout) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(normal_init)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] for left-padded tokens [B, L] (L ≤ max_len)."""
        b, t = tokens.shape
        pos = torch.arange(self.config.max_len - t, self.config.max_len, device=tokens.device)
        x = self.item_emb(tokens) * math.sqrt(self.config.d_model) + self.pos_emb(pos)
        x = self.drop(x)
        valid = tokens > 0
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        # Every position may attend to itself, so all-padding rows stay finite (their output is never used).
        mask = causal & (valid[:, None, :] | torch.eye(t, dtype=torch.bool, device=tokens.device))
        mask = mask[:, None]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln_f(x)

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight[1:]

    def user_vector(self, tokens: torch.Tensor) -> torch.Tensor:
        # Leading columns that are padding for every row change nothing (positions are right-aligned): drop them.
        nonpad = (tokens > 0).any(0).nonzero()
        first = int(nonpad[0]) if len(nonpad) else tokens.shape[1] - 1
        return self.hidden(tokens[:, first:])[:, -1]

    def score(self, users: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scores of all items [B, n_items] for the next item after each history."""
        return self.user_vector(tokens) @ self.item_weights().T

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.hidden(inputs)
        keep = targets > 0
        logits = h[keep] @ self.item_weights().T
        return F.cross_entropy(logits, targets[keep] - 1)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"n_items": str(self.n_items), **{k: str(v) for k, v in asdict(self.config).items()}})

    @classmethod
    def load(cls, path: str | Path, config: SASRecConfig, n_items: int, device: str = "cpu") -> SASRec:
        model = cls(n_items, config)
        model.load_state_dict(load_file(str(path), device=device))
        return model.to(device)

    def save_folder(self, path: str | Path) -> Path:
        """A standalone model folder: ``config.json`` (config + catalogue size) + ``model.safetensors``."""
        path = Path(path)
        self.save(path / "model.safetensors")
        write_json(path / "config.json", {"model": "sasrec", "n_items": self.n_items, "config": asdict(self.config)})
        return path

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> SASRec:
        """Load a folder written by :meth:`save_folder`; needs nothing else."""
        path = Path(path)
        meta = read_json(path / "config.json")
        config = from_dict(SASRecConfig, meta["config"], where=str(path / "config.json"))
        return cls.load(path / "model.safetensors", config, int(meta["n_items"]), device).eval()


def _epoch_batches(rows: np.ndarray, lengths: np.ndarray, config: SASRecConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches for one epoch.

    With bucketing, rows are sorted by (noisy) length and cut into batches holding about the same number of
    *targets* as a random batch of ``batch_size`` rows would (many short rows or a few long ones). Equal target
    counts keep every target's weight in the loss the same as with random batches, while padding all but
    disappears; batches of a fixed row count would over-weight the targets of short sequences.
    """
    if not config.length_bucketing:
        order = rng.permutation(rows)
        return [order[s : s + config.batch_size] for s in range(0, len(order), config.batch_size)]
    return length_bucketed_batches(lengths, rows, config.batch_size, config.max_len, rng)


def train_sasrec(
    split: SequenceSplit,
    config: SASRecConfig,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SASRec, list[dict[str, Any]]]:
    """Train with early stopping on validation NDCG@10; returns the best model (by validation) and history."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SASRec(split.n_items, config).to(device)
    opt = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    lengths = split.train_offsets[1:] - split.train_offsets[:-1]
    rows_all = np.nonzero(lengths >= 2)[0]
    steps_per_epoch = len(_epoch_batches(rows_all, lengths, config, np.random.default_rng(0)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config.warmup_steps, steps_per_epoch * config.epochs))

    stopper, history = EarlyStopping(config.patience), []
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, n = 0.0, 0
        for step, rows in enumerate(_epoch_batches(rows_all, lengths, config, rng)):
            inp, tgt = shifted_pair(split.train_offsets, split.train_items, rows, config.max_len)
            inp_t, tgt_t = torch.from_numpy(inp).to(device), torch.from_numpy(tgt).to(device)
            # Trim leading columns that are padding for the whole batch (most sequences are short).
            first = int((tgt_t > 0).any(0).nonzero()[0])
            loss = model.loss(inp_t[:, first:], tgt_t[:, first:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(rows)
            n += len(rows)
            if progress:
                progress(step + 1, steps_per_epoch)
        train_s = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, "loss": total / max(1, n), "train_s": train_s}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            model.eval()
            t1 = time.perf_counter()
            metrics, _ = evaluate_full_ranking(
                model.score, split.valid, ks=(10,), max_len=config.max_len, batch_size=config.eval_batch_size, device=device
            )
            row.update({f"valid_{k}": v for k, v in metrics.items()}, eval_s=time.perf_counter() - t1)
            if stopper.update(metrics["ndcg@10"], model):
                row["best"] = True
        history.append(row)
        log(
            f"epoch {epoch}: loss {row['loss']:.4f}  train {train_s:.1f}s"
            + (f"  valid N@10 {row['valid_ndcg@10']:.4f} R@10 {row['valid_recall@10']:.4f}" if "valid_ndcg@10" in row else "")
        )
        if on_epoch:
            on_epoch(row)
        if stopper.exhausted:
            log(f"early stop after epoch {epoch} (best valid N@10 {stopper.best:.4f})")
            break
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    model.eval()
    return model, history
