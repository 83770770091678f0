"""Stage 2 as one call: train TIGER and/or S²GR on a split's sequences over stage 1's SIDs, save to a folder.

Each model lands in ``<out_dir>/<name>/``: ``model.safetensors`` + ``config.json`` (the model), ``history.json`` and
``train_metrics.json``; the per-epoch checkpoint a killed run resumes from (safetensors + JSON) goes to
``checkpoint_dir/checkpoint/`` (in a pipeline run: the node's folder under ``checkpoints/``, never the model's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.data.splits import SequenceSplit
from thinkrec.retrieval.clusters import code_clusters
from thinkrec.retrieval.inference import GenerativeScorer, tune_dense_weight
from thinkrec.retrieval.model import GenerativeRetriever, RetrieverConfig
from thinkrec.retrieval.train import RetrieverTrainConfig, load_retriever, save_retriever, train_retriever
from thinkrec.tokenize.sids import SIDMap
from thinkrec.tokenize.stage import TokenizeArtifact
from thinkrec.utils import distributed as dist
from thinkrec.utils.config import spec
from thinkrec.utils.io import read_json, write_json
from thinkrec.utils.registry import Registry

# The generative retrievers: one model file, variants by config (TIGER = S²GR with thinking off).
RETRIEVERS: Registry[Callable[[RetrieverConfig], RetrieverConfig]] = Registry("generative retriever")
RETRIEVERS.register("tiger", "TIGER: encoder-decoder over Semantic-ID codes, trie-constrained beams",
                    lambda c: replace(c, thinking=False))
RETRIEVERS.register("s2gr", "S²GR: TIGER plus a latent thinking token before each SID code (cluster-aligned)",
                    lambda c: replace(c, thinking=True))
MODEL_NAMES = RETRIEVERS.names()
RESCORE_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class RetrievalConfig:
    # TIGER = S²GR with thinking off
    models: list[str] = spec(default_factory=lambda: ["tiger", "s2gr"], choices=RETRIEVERS.names)
    model: RetrieverConfig = field(default_factory=RetrieverConfig)
    train: RetrieverTrainConfig = field(default_factory=RetrieverTrainConfig)
    beam: int = spec(20, ge=1)  # beam size at evaluation / recommendation (the ranked list's length)
    # > 0: re-order the beams by log-probability + this × the model's item-head log-probability (LIGER-style
    # hybrid; candidates still come from the trie-constrained beams). 0 = pure generative ranking; None (YAML null)
    # = pick it on the validation subset from RESCORE_GRID (saved to <model>/rescore.json).
    rescore_weight: float | None = spec(0.0, ge=0.0)

    def _checks(self) -> list[tuple[str, str]]:
        if (self.rescore_weight is None or self.rescore_weight > 0) and self.model.item_loss_weight <= 0:
            return [("rescore_weight", "re-scoring the beams needs the item head: set retrieval.model.item_loss_weight "
                                       f"> 0 or rescore_weight 0 (got {self.rescore_weight})")]
        return []

    def model_config(self, name: str) -> RetrieverConfig:
        return RETRIEVERS.get(name, "retrieval.models")(self.model)


def train_one(
    name: str,
    split: SequenceSplit,
    sids: TokenizeArtifact,
    cfg: RetrievalConfig,
    out_dir: str | Path,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> tuple[GenerativeRetriever, dict[str, Any]]:
    """Train retriever ``name`` ("tiger" | "s2gr") into ``out_dir/name``; resumes from its checkpoint (in
    ``checkpoint_dir``, default the model's folder)."""
    mcfg = cfg.model_config(name)
    out = Path(out_dir) / name
    clusters = None
    if mcfg.thinking and mcfg.align:
        clusters = code_clusters(sids.quantizer.codebooks(), sids.sidmap.radix, mcfg.n_clusters, seed=cfg.train.seed)
    t = time.perf_counter()
    model, history = train_retriever(split, sids.sidmap, mcfg, cfg.train, device, clusters, checkpoint_dir or out,
                                     log, progress,
                                     codebooks=sids.quantizer.codebooks() if mcfg.codebook_init else None)
    wall = time.perf_counter() - t
    if not dist.is_main():  # torchrun: every rank trained, rank 0 writes
        return model, {}
    (out / "rescore.json").unlink(missing_ok=True)  # tuned for the previous model
    save_retriever(model, out)
    sids.sidmap.save(out / "sidmap")  # the folder serves on its own: model + the SID map its trie comes from
    write_json(out / "history.json", history)
    summary = {
        "wall_s": wall,
        "train_s": float(sum(h["train_s"] for h in history)),
        "epochs": len(history),
        "samples_per_s": float(np.median([h["samples_per_s"] for h in history])) if history else 0.0,
        "best_valid_ndcg@10": max((h["valid_ndcg@10"] for h in history), default=0.0),
    }
    write_json(out / "train_metrics.json", summary)
    return model, summary


def load_scorer(path: str | Path, device: str = "cpu", beam: int | None = None,
                dense_weight: float | None = None) -> GenerativeScorer:
    """A retriever folder as a scorer, from the folder alone: model, SID map and (``rescore.json``, written by
    :func:`resolve_rescore_weight`) the beam and dense weight it was tuned for; arguments override them."""
    path = Path(path)
    tuned = read_json(path / "rescore.json") if (path / "rescore.json").exists() else {}
    beam = beam if beam is not None else int(tuned.get("beam", 20))
    weight = dense_weight if dense_weight is not None else float(tuned.get("weight", 0.0))
    return GenerativeScorer(load_retriever(path, device), SIDMap.load(path / "sidmap"), beam, weight)


def resolve_rescore_weight(model: GenerativeRetriever, split: SequenceSplit, sidmap: SIDMap,
                           cfg: RetrievalConfig, model_dir: str | Path, log: Callable[[str], None] = print) -> float:
    """The configured ``rescore_weight``, or (None) the one tuned on the training run's validation subset —
    computed once per trained model and kept in ``model_dir/rescore.json``."""
    path = Path(model_dir) / "rescore.json"
    if cfg.rescore_weight is not None:
        write_json(path, {"weight": float(cfg.rescore_weight), "beam": cfg.beam, "tuned": False})
        return float(cfg.rescore_weight)
    if path.exists() and read_json(path).get("beam") == cfg.beam and read_json(path).get("tuned", True):
        return float(read_json(path)["weight"])
    valid = split.valid
    n = cfg.train.valid_users
    if n and len(valid) > n:  # the early-stopping subset
        valid = valid.subset(np.sort(np.random.default_rng(cfg.train.seed).choice(len(valid), n, replace=False)))
    weight, by_weight = tune_dense_weight(model, sidmap, valid, cfg.beam, RESCORE_GRID, model.config.max_len,
                                          cfg.train.eval_batch_size)
    write_json(path, {"weight": weight, "valid_ndcg@10_by_weight": {str(w): v for w, v in by_weight.items()},
                      "valid_users": len(valid), "beam": cfg.beam, "tuned": True})
    log(f"rescore weight {weight:g} (valid N@10 " + ", ".join(f"{w:g}: {v:.4f}" for w, v in by_weight.items()) + ")")
    return weight
