"""The funnel's one selection rule: best at 6 decimals; ties to the preferred input, then to the earliest."""

import pytest

from thinkrec.utils.selection import select_best


def test_the_best_value_wins_and_float_noise_decides_nothing():
    assert select_best({"a": 0.1, "b": 0.3, "c": 0.2}) == "b"
    assert select_best({"a": 0.3, "b": 0.3 + 1e-9}) == "a"  # equal at 6 decimals: the earliest listed
    assert select_best({"dnn": 0.5, "initial": 0.5 - 1e-8}, prefer=("initial",)) == "initial"  # ties keep the input
    assert select_best({"dnn": 0.5001, "initial": 0.5}, prefer=("initial",)) == "dnn"


def test_no_options_is_an_error():
    with pytest.raises(ValueError, match="no options"):
        select_best({})
