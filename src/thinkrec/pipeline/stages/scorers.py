"""One node per next-item scorer of the registry (``popularity``, ``sasrec``, ``cooc``, ``ease``, ``bsarec``,
``retrieval/<name>``) and, for a generative one, its re-score weights (``retrieval/<name>/rescore``)."""

from __future__ import annotations

from typing import Any

from thinkrec.pipeline.context import Context
from thinkrec.pipeline.graph import Node
from thinkrec.pipeline.scorers import SCORERS
from thinkrec.pipeline.split import split_inputs


def _scorer_node(name: str) -> Node:
    spec = SCORERS.get(name)
    folder = spec.folder(name)
    artifacts = (f"{folder}/model.safetensors", f"{folder}/config.json") + ((f"{folder}/sidmap",) if spec.generative else ())
    return Node(folder, lambda ctx: spec.inputs(ctx.config, name),
                lambda ctx: ["data", "sids"] if spec.needs_sids else ["data"], artifacts,
                lambda ctx: spec.train(ctx, name, ctx.root / folder), distributed=spec.distributed, homes=(folder,))


def _rescore_node(name: str) -> Node:
    folder = SCORERS.get(name).folder(name)

    def run(ctx: Context) -> dict[str, Any]:
        from thinkrec.retrieval.stage import resolve_rescore_weight
        from thinkrec.retrieval.train import load_retriever
        from thinkrec.tokenize.sids import SIDMap

        model = load_retriever(ctx.root / folder, ctx.config.run.device)
        weight = resolve_rescore_weight(model, ctx.get_split(), SIDMap.load(ctx.root / folder / "sidmap"),
                                        ctx.config.retrieval, ctx.root / folder, log=lambda m: ctx.log(f"{name}: {m}"))
        return {"weight": weight, "beam": ctx.config.retrieval.beam}

    def inputs(ctx: Context) -> dict[str, Any]:
        r = ctx.config.retrieval
        return {"beam": r.beam, "rescore_weight": r.rescore_weight, "valid_users": r.train.valid_users,
                "seed": r.train.seed, "grid": list(_rescore_grid()), **split_inputs(ctx.config)}

    return Node(f"{folder}/rescore", inputs, lambda ctx: [folder], (f"{folder}/rescore.json",), run)


def _rescore_grid() -> tuple[float, ...]:
    from thinkrec.retrieval.stage import RESCORE_GRID

    return RESCORE_GRID


def source_node(name: str) -> str:
    spec = SCORERS.get(name, "candidates.sources")
    return f"{spec.folder(name)}/rescore" if spec.generative else spec.folder(name)


def nodes() -> list[Node]:
    out = []
    for entry in SCORERS.entries():
        out.append(_scorer_node(entry.name))
        if entry.obj.generative:
            out.append(_rescore_node(entry.name))
    return out
