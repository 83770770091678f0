"""S²GR's thinking tokens explained.

Each thinking token t_l is mapped to its nearest code cluster of level l (cosine to the cluster centres the
alignment loss trains against); a cluster is described by the categories of the items whose level-l code
falls in it, and the explanation says whether the code generated right after t_l lies in that cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from thinkrec.retrieval.clusters import cluster_categories
from thinkrec.retrieval.inference import Recommendation, nearest_clusters, thought_agreement
from thinkrec.retrieval.model import GenerativeRetriever


def coarse_labels(categories: list[list[str] | None], depth: int = 2) -> list[str | None]:
    """Category paths cut to ``depth`` levels below a root shared by (nearly) every item ("Beauty")."""
    paths = [[c for c in (cats or []) if c] for cats in categories]
    firsts = [p[0] for p in paths if p]
    if firsts and max(firsts.count(f) for f in set(firsts)) >= 0.9 * len(paths):
        paths = [p[1:] for p in paths]
    return [" > ".join(p[:depth]) or None for p in paths]


class ThoughtExplainer:
    """Explains S²GR's thinking tokens of a :class:`Recommendation`: per item and level, the nearest code cluster
    (cosine), its dominant categories, and whether the code generated next lies in it."""

    def __init__(self, model: GenerativeRetriever, sid_codes: np.ndarray, labels: list[str | None]):
        self.model = model
        self.cats = cluster_categories(model.code_clusters, sid_codes, labels) if model.thinking else {}

    def explain(self, rec: Recommendation) -> tuple[list[list[list[dict[str, Any]]]], dict[int, float] | None]:
        """``[B][k]`` lists of per-level dicts (level, cluster, cos, categories, agrees), and the agreement rate
        per level over these beams; empty without thinking tokens (TIGER)."""
        if rec.beams.thoughts is None:
            return [[[] for _ in row] for row in rec.items], None
        which = torch.from_numpy(rec.beam_index)  # shown items' beams (re-scoring may reorder them)
        rows = torch.arange(len(which))[:, None]
        th, codes = rec.beams.thoughts.cpu()[rows, which], rec.beams.codes.cpu()[rows, which]
        nearest, sim = nearest_clusters(self.model, th)
        out = []
        for b in range(len(which)):
            row = []
            for j in range(which.shape[1]):
                levels = []
                for lv in range(self.model.n_levels):
                    c = int(nearest[b, j, lv])
                    if c < 0 or int(rec.items[b, j]) < 0:
                        continue
                    truth = int(self.model.code_clusters[lv, int(codes[b, j, lv])])
                    levels.append({"level": lv + 1, "cluster": c, "cos": float(sim[b, j, lv]),
                                   "categories": [[n, float(sh)] for n, sh in self.cats.get((lv, c), [])],
                                   "agrees": truth == c, "code_cluster": truth})
                row.append(levels)
            out.append(row)
        return out, thought_agreement(self.model, th, codes)


def thought_lines(levels: list[dict[str, Any]]) -> list[str]:
    """One readable line per level of :meth:`ThoughtExplainer.explain`'s output."""
    lines = []
    for e in levels:
        top = ", ".join(f"{name} {share:.0%}" for name, share in e["categories"])
        mark = "✓" if e["agrees"] else f"✗ (code in cluster {e['code_cluster']})"
        lines.append(f"t{e['level']} → cluster {e['cluster']} (cos {e['cos']:.2f}; {top}) {mark}")
    return lines
