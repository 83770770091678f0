"""Stage 2: generative retrieval over Semantic IDs (TIGER baseline, S²GR latent thinking)."""

from thinkrec.retrieval.beam import BeamResult, beams_to_items, constrained_beam_search
from thinkrec.retrieval.inference import GenerativeScorer
from thinkrec.retrieval.model import GenerativeRetriever, RetrieverConfig
from thinkrec.retrieval.train import RetrieverTrainConfig, load_retriever, save_retriever, train_retriever

__all__ = [
    "BeamResult",
    "GenerativeRetriever",
    "GenerativeScorer",
    "RetrieverConfig",
    "RetrieverTrainConfig",
    "beams_to_items",
    "constrained_beam_search",
    "load_retriever",
    "save_retriever",
    "train_retriever",
]
