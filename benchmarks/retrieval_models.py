"""The generative-retrieval variants the benchmarks train: a registered retriever (``RETRIEVERS``: tiger, s2gr)
plus ``retrieval.model`` overrides. Kept apart so a GPU box needs no faiss to read them."""

# variant: (registered retriever, RetrieverConfig overrides)
MODELS: dict[str, tuple[str, dict]] = {
    "s2gr": ("s2gr", {}),
    # the open weights tuned on validation (benchmarks/retrieval_tune.py): alignment and InfoNCE at 0.1
    "s2gr-light": ("s2gr", {"align_weight": 0.1, "nce_weight": 0.1}),
    "tiger": ("tiger", {}),
    "s2gr-noalign": ("s2gr", {"align": False}),
    "s2gr-noaux": ("s2gr", {"aux_decoder": False}),
    "s2gr-nosupervision": ("s2gr", {"align": False, "aux_decoder": False}),
    "tiger-codetokens": ("tiger", {"input_mode": "code"}),
}


def variant_overrides(name: str) -> tuple[str, list[str]]:
    """(registered retriever, ``--set`` strings) of a variant."""
    base, over = MODELS[name]
    return base, [f"retrieval.model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in over.items()]
