"""The generative-retrieval variants the benchmarks train (kept apart so a GPU box needs no faiss to read them)."""

# name: (model label, RetrieverConfig overrides)
MODELS: dict[str, tuple[str, dict]] = {
    "s2gr": ("s2gr", {"thinking": True}),
    # the open weights tuned on validation (benchmarks/retrieval_tune.py): alignment and InfoNCE at 0.1
    "s2gr-light": ("s2gr", {"thinking": True, "align_weight": 0.1, "nce_weight": 0.1}),
    "tiger": ("tiger", {"thinking": False}),
    "s2gr-noalign": ("s2gr", {"thinking": True, "align": False}),
    "s2gr-noaux": ("s2gr", {"thinking": True, "aux_decoder": False}),
    "s2gr-nosupervision": ("s2gr", {"thinking": True, "align": False, "aux_decoder": False}),
    "tiger-codetokens": ("tiger", {"thinking": False, "input_mode": "code"}),
}
