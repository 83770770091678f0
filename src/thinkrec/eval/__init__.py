"""Evaluation: next-item full ranking, labelled-list metrics, bootstrap CIs and paired tests."""

from thinkrec.eval.metrics import list_metrics, rank_metrics, ranks_from_scores
from thinkrec.eval.protocol import evaluate_full_ranking
from thinkrec.eval.stats import bootstrap_ci, paired_test

__all__ = ["bootstrap_ci", "evaluate_full_ranking", "list_metrics", "paired_test", "rank_metrics", "ranks_from_scores"]
