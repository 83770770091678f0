"""Readable recommendations from a run directory, with S²GR's thinking tokens explained.

Each thinking token t_l is mapped to its nearest code cluster of level l (cosine to the cluster centres the
alignment loss trains against); a cluster is described by the categories of the items whose level-l code
falls in it, and the explanation says whether the code generated right after t_l lies in that cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from thinkrec.data.batching import pad_histories
from thinkrec.data.dataset import Dataset
from thinkrec.retrieval.clusters import cluster_categories
from thinkrec.retrieval.inference import nearest_clusters, thought_agreement
from thinkrec.retrieval.stage import load_scorer
from thinkrec.tokenize.report import category_labels
from thinkrec.tokenize.stage import load_tokenize


@dataclass
class ItemView:
    item: int
    item_id: str
    title: str
    category: str
    score: float = 0.0
    sid: str = ""
    thoughts: list[str] | None = None


@dataclass
class Explanation:
    user_id: str
    history_len: int
    history: list[ItemView]
    items: list[ItemView]
    agreement: dict[int, float] | None


def _resolve_user(ds: Dataset, user: str) -> int:
    if user.startswith("#"):
        idx = int(user[1:])
        if not 0 <= idx < ds.n_users:
            raise ValueError(f"user index {idx} out of range [0, {ds.n_users})")
        return idx
    hit = ds.users.filter(ds.users["user_id"] == user)
    if hit.height == 0:
        raise KeyError(f"unknown user {user!r} in dataset {ds.name} (use #N for a dense index)")
    return int(hit["user"][0])


def _coarse_labels(ds: Dataset, depth: int = 2) -> list[str | None]:
    """Category paths cut to ``depth`` levels below a root shared by (nearly) every item ("Beauty")."""
    paths = [[c for c in (cats or []) if c] for cats in ds.items["categories"].to_list()]
    firsts = [p[0] for p in paths if p]
    if firsts and max(firsts.count(f) for f in set(firsts)) >= 0.9 * len(paths):
        paths = [p[1:] for p in paths]
    return [" > ".join(p[:depth]) or None for p in paths]


def explain_recommendations(root: str | Path, model_name: str, user: str, k: int = 10, beam: int = 20,
                            device: str = "cpu", show_history: int = 5, dense_weight: float = 0.0) -> Explanation:
    root = Path(root)
    ds = Dataset.load(root / "data")
    sids = load_tokenize(root / "sids")
    scorer = load_scorer(root / "retrieval" / model_name, sids, max(beam, k), device, dense_weight)
    model = scorer.model
    u = _resolve_user(ds, user)
    offsets, seq = ds.sequences()
    tokens = torch.from_numpy(pad_histories(offsets, seq, np.array([u]), model.config.max_len)).to(device)
    rec = scorer.recommend(tokens, k, return_thoughts=model.thinking)
    labels = category_labels(ds)
    coarse = _coarse_labels(ds)
    titles = ds.items["title"].to_list()
    ids = ds.items["item_id"].to_list()

    def view(i: int) -> ItemView:
        return ItemView(int(i), str(ids[i]), titles[i] or "(untitled)", labels[i] or "(no category)")

    hist = seq[offsets[u] : offsets[u + 1]]
    history = [view(i) for i in hist[-show_history:]]
    items: list[ItemView] = []
    agreement = None
    if rec.beams.thoughts is not None:
        which = torch.from_numpy(rec.beam_index)  # shown items' beams (re-scoring may reorder them)
        th = rec.beams.thoughts.cpu()[torch.arange(len(which))[:, None], which]
        codes = rec.beams.codes.cpu()[torch.arange(len(which))[:, None], which]
        nearest, sim = nearest_clusters(model, th)
        cats = cluster_categories(model.code_clusters, sids.sidmap.codes, coarse)
        agreement = thought_agreement(model, th, codes)
    for j, item in enumerate(rec.items[0]):
        if item < 0:
            continue
        v = view(item)
        v.score = float(rec.scores[0, j])
        v.sid = sids.sidmap.sid_strings(np.array([item]), wrap=False)[0]
        if rec.beams.thoughts is not None:
            lines = []
            for lv in range(model.n_levels):
                c = int(nearest[0, j, lv])
                if c < 0:
                    continue
                truth = int(model.code_clusters[lv, int(codes[0, j, lv])])
                top = ", ".join(f"{name} {share:.0%}" for name, share in cats.get((lv, c), []))
                mark = "✓" if truth == c else f"✗ (code in cluster {truth})"
                lines.append(f"t{lv + 1} → cluster {c} (cos {float(sim[0, j, lv]):.2f}; {top}) {mark}")
            v.thoughts = lines
        items.append(v)
    return Explanation(str(ds.users["user_id"][u]), int(len(hist)), history, items, agreement)
