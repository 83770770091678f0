"""Stage 1: item embeddings, Semantic-ID quantizers, the item ↔ SID map, the decoding trie and reports."""

from thinkrec.tokenize.base import FitContext, Quantizer
from thinkrec.tokenize.embed import DEFAULT_TEMPLATE, EmbedConfig, embed_items, embed_texts, load_npy
from thinkrec.tokenize.report import category_labels, format_report, plot_code_usage, sid_report
from thinkrec.tokenize.sids import SIDMap, SIDTrie, last_level_distances

__all__ = [
    "DEFAULT_TEMPLATE",
    "EmbedConfig",
    "FitContext",
    "Quantizer",
    "SIDMap",
    "SIDTrie",
    "category_labels",
    "embed_items",
    "embed_texts",
    "format_report",
    "last_level_distances",
    "load_npy",
    "plot_code_usage",
    "sid_report",
]
