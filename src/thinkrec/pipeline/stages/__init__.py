"""The stage graph's nodes, one module per stage family; :func:`build_nodes` is the graph's list of them.

``data`` (the dataset; ``sids``, stage 1), ``scorers`` (one node per next-item scorer, the generative ones' re-score
weights), ``candidates`` (the merged candidate set), ``rerank`` (lists + featurizer, the evaluator, the re-rankers),
``llm`` (stage 4). ``evaluate`` and ``report`` are the always-run steps that read what the nodes wrote.
"""

from __future__ import annotations

from thinkrec.pipeline.graph import Node
from thinkrec.pipeline.stages import candidates, data, llm, rerank, scorers

#: node families in funnel order
FAMILIES = (data, scorers, candidates, rerank, llm)


def build_nodes() -> list[Node]:
    """Every node of the graph (the ones a config does not use are never ensured)."""
    return [node for family in FAMILIES for node in family.nodes()]
