"""Full-ranking next-item evaluation over the whole item set."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from thinkrec.data.batching import pad_histories
from thinkrec.data.splits import EvalExamples
from thinkrec.eval.metrics import mean_metrics, rank_metrics, ranks_from_scores
from thinkrec.utils.faults import check_finite

# score_fn(users [B], padded history tokens [B, L] (item + 1, 0 = pad)) -> scores [B, n_items]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def compute_ranks(
    score_fn: ScoreFn,
    examples: EvalExamples,
    max_len: int = 50,
    batch_size: int = 1024,
    mask_history: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """0-based rank of every example's target among all items."""
    ranks = np.empty(len(examples), dtype=np.int64)
    # Visit examples by history length so each batch pads little (models may trim all-padding columns).
    by_length = np.argsort(examples.offsets[1:] - examples.offsets[:-1], kind="stable")
    for start in range(0, len(examples), batch_size):
        rows = np.sort(by_length[start : start + batch_size])
        tokens = torch.from_numpy(pad_histories(examples.offsets, examples.items, rows, max_len)).to(device)
        users = torch.from_numpy(examples.users[rows]).to(device)
        scores = score_fn(users, tokens).float()
        check_finite(scores, "evaluate", f"batch {start // batch_size}", "scores", allow_neg_inf=True)
        if mask_history:
            scores = _mask_full_history(scores, examples, rows, device)
        targets = torch.from_numpy(examples.targets[rows]).to(device)
        ranks[rows] = ranks_from_scores(scores, targets).cpu().numpy()
    return ranks


def _mask_full_history(scores: torch.Tensor, ex: EvalExamples, rows: np.ndarray, device) -> torch.Tensor:
    """Set items of the whole (untruncated) history to −inf, except the target itself (repeat consumption)."""
    lengths = ex.offsets[rows + 1] - ex.offsets[rows]
    r = np.repeat(np.arange(len(rows)), lengths)
    cols = np.concatenate([ex.items[ex.offsets[i] : ex.offsets[i + 1]] for i in rows]) if len(rows) else np.zeros(0, np.int64)
    keep = cols != ex.targets[rows][r]
    scores = scores.clone()
    scores[torch.from_numpy(r[keep]).to(device), torch.from_numpy(cols[keep]).to(device)] = float("-inf")
    return scores


def evaluate_full_ranking(
    score_fn: ScoreFn,
    examples: EvalExamples,
    ks: Sequence[int] = (5, 10, 20),
    max_len: int = 50,
    batch_size: int = 1024,
    mask_history: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean metrics and per-example metrics (for bootstrap CIs and paired tests)."""
    ranks = compute_ranks(score_fn, examples, max_len, batch_size, mask_history, device)
    per_example = rank_metrics(ranks, ks)
    return mean_metrics(per_example), per_example
