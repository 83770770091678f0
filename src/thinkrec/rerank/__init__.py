"""Stage 3: generative re-ranking (EGLR) with baselines, over one list format."""

from thinkrec.rerank.gbdt import LightGBMConfig, LightGBMRanker
from thinkrec.rerank.lists import FEATURES, RerankLists, funnel_lists, impression_lists, temporal_thirds
from thinkrec.rerank.models import ListEvaluator, PointerGenerator, RerankModelConfig
from thinkrec.rerank.train import (
    RERANK_MODELS,
    RerankTrainConfig,
    order_metrics,
    rerank_orders,
    train_evaluator,
    train_reranker,
)

__all__ = [
    "FEATURES", "RERANK_MODELS", "LightGBMConfig", "LightGBMRanker", "ListEvaluator", "PointerGenerator", "RerankLists",
    "RerankModelConfig", "RerankTrainConfig", "funnel_lists", "impression_lists", "order_metrics", "rerank_orders", "temporal_thirds",
    "train_evaluator", "train_reranker",
]
