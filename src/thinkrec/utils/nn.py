"""Small torch helpers shared by the models (SASRec, the generative retriever)."""

from __future__ import annotations

import torch.nn as nn


def normal_init(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2/BERT-style weight init, for ``model.apply(normal_init)``: Linear and Embedding weights ~ N(0, std²),
    Linear biases 0; other modules are left as they are."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
