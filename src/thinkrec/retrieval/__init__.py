"""Stage 2: generative retrieval over Semantic IDs (TIGER baseline, S²GR latent thinking)."""

from thinkrec.retrieval.beam import beams_to_items, constrained_beam_search
from thinkrec.retrieval.model import GenerativeRetriever, RetrieverConfig

__all__ = ["GenerativeRetriever", "RetrieverConfig", "beams_to_items", "constrained_beam_search"]
