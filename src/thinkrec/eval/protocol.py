"""Full-ranking next-item evaluation over the whole item set."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from thinkrec.data.batching import pad_histories
from thinkrec.data.seen import mask_seen_scores
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
    exclude_seen: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """0-based rank of every example's target among all items. ``exclude_seen`` (the seen-item policy,
    :mod:`thinkrec.data.seen`): the whole history's items are ranked last; a target the user already had is a miss
    (rank = number of items), as in the list a live request gets."""
    ranks = np.empty(len(examples), dtype=np.int64)
    # Visit examples by history length so each batch pads little (models may trim all-padding columns).
    by_length = np.argsort(examples.offsets[1:] - examples.offsets[:-1], kind="stable")
    for start in range(0, len(examples), batch_size):
        rows = np.sort(by_length[start : start + batch_size])
        tokens = torch.from_numpy(pad_histories(examples.offsets, examples.items, rows, max_len)).to(device)
        users = torch.from_numpy(examples.users[rows]).to(device)
        scores = score_fn(users, tokens).float()
        check_finite(scores, "evaluate", f"batch {start // batch_size}", "scores", allow_neg_inf=True)
        targets = torch.from_numpy(examples.targets[rows]).to(device)
        if exclude_seen:  # the whole (untruncated) history, not only the model's window
            scores = mask_seen_scores(scores, [examples.history(i) for i in rows])
            r = ranks_from_scores(scores, targets)
            r = torch.where(torch.isneginf(scores.gather(1, targets.view(-1, 1))).squeeze(1), scores.shape[1], r)
        else:
            r = ranks_from_scores(scores, targets)
        ranks[rows] = r.cpu().numpy()
    return ranks


def evaluate_full_ranking(
    score_fn: ScoreFn,
    examples: EvalExamples,
    ks: Sequence[int] = (5, 10, 20),
    max_len: int = 50,
    batch_size: int = 1024,
    exclude_seen: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean metrics and per-example metrics (for bootstrap CIs and paired tests)."""
    ranks = compute_ranks(score_fn, examples, max_len, batch_size, exclude_seen, device)
    per_example = rank_metrics(ranks, ks)
    return mean_metrics(per_example), per_example
