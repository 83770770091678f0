"""Nodes ``data`` (the dataset, loaded and checked once) and ``sids`` (Semantic IDs, stage 1)."""

from __future__ import annotations

from typing import Any

from thinkrec.pipeline.context import Context
from thinkrec.pipeline.graph import Node
from thinkrec.pipeline.split import split_inputs


def _data_inputs(ctx: Context) -> dict[str, Any]:
    d = ctx.config.data
    return {"dataset": d.dataset, "data_root": d.data_root, "format": d.format, "options": d.options}


def run_data(ctx: Context) -> dict[str, Any]:
    from thinkrec.data.registry import load_dataset

    d = ctx.config.data
    dataset = load_dataset(d.dataset, d.data_root, format=d.format, **d.options)
    ctx.split, ctx.data_checked, ctx._seen = None, False, None
    ctx.check_data(dataset)  # before it is saved and anything trains on it
    dataset.save(ctx.root / "data")
    ctx.dataset = dataset
    ctx.log(f"data: {d.dataset} → {dataset.n_users} users, {dataset.n_items} items, {dataset.n_interactions} interactions")
    return {"stats": dataset.stats()}


def run_sids(ctx: Context) -> dict[str, Any]:
    from thinkrec.tokenize.stage import run_tokenize

    art = run_tokenize(ctx.get_dataset(), ctx.get_split(), ctx.config.tokenize, ctx.root / "sids", log=ctx.log,
                       checkpoint_dir=ctx.checkpoints("quantizer"))
    return {"unique_before_dedup": art.report["unique_before_dedup"]}


def nodes() -> list[Node]:
    return [
        Node("data", _data_inputs, lambda ctx: [], ("data",), run_data, homes=("data",)),
        Node("sids", lambda ctx: {"tokenize": ctx.config.tokenize, **split_inputs(ctx.config)}, lambda ctx: ["data"],
             ("sids/codes.parquet", "sids/sidmap", "sids/quantizer"), run_sids, homes=("sids",)),
    ]
