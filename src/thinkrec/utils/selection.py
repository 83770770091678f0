"""The one rule by which the funnel chooses among options measured on validation (sources, merge order,
re-rankers, the LLM phases): the best value, compared at 6 decimals so that float noise decides nothing; ties go
to the preferred option (the input a stage would replace), then to the earliest listed (the simpler one)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def select_best(options: Mapping[str, float], prefer: Sequence[str] = ()) -> str:
    """The name of the best option by :mod:`this rule <thinkrec.utils.selection>` (higher is better)."""
    if not options:
        raise ValueError("select_best: no options to choose from")
    order = list(options)
    return max(order, key=lambda n: (round(float(options[n]), 6), n in prefer, -order.index(n)))
