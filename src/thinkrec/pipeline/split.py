"""The run's split from its config, and the config it depends on (part of every split-reading node's cache key).

Duck-typed on ``config.data`` so that the registry, the config and the graph all import it without a cycle."""

from __future__ import annotations

from typing import Any

from thinkrec.data.splits import SequenceSplit, make_split


def split_inputs(config: Any) -> dict[str, Any]:
    """What a split depends on: ``data.split`` and, for temporal splits, the fractions."""
    d = config.data
    return {"split": d.split, "valid_frac": d.valid_frac, "test_frac": d.test_frac}


def split_of(dataset: Any, config: Any) -> SequenceSplit:
    """The run's split of ``dataset`` by ``config.data`` (leave-one-out, or temporal with its fractions)."""
    d = config.data
    temporal = d.split.startswith(("temporal", "global"))
    kwargs = {"valid_frac": d.valid_frac, "test_frac": d.test_frac} if temporal else {}
    return make_split(dataset, d.split, **kwargs)
