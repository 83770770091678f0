"""Fuzzing ``--set`` strings: random ``key=value`` overrides through ``load_run_config`` (and the whole-config
check ``thinkrec run`` makes) succeed or raise ConfigError — never another exception
(``thinkrec.testing.fuzz.run_set_case``; the large campaign is ``benchmarks/fuzz.py``)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrec.pipeline.config import load_run_config
from thinkrec.testing.fuzz import LOADED, REJECTED, config_keys, run_set_case
from thinkrec.utils.config import ConfigError

KEYS = config_keys()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rnd=st.randoms(use_true_random=False))
def test_random_overrides_load_or_raise_config_error(rnd):
    assert run_set_case(rnd, KEYS).status in (LOADED, REJECTED)


def test_config_keys_cover_sections_and_leaves():
    assert {"run", "run.seed", "retrieval.model.d_model", "stages"} <= set(KEYS)
    assert KEYS["run.seed"] == 0


@pytest.mark.parametrize("value", [
    "[", "{a: 1", "'unterminated", "`x`", ":",  # YAML syntax errors
    "*a",  # an undefined alias
    "!!python/object:os.system",  # a tag safe_load refuses
    "2001-13-45",  # a date YAML resolves but datetime refuses (ValueError)
    "!!timestamp x",  # PyYAML's timestamp constructor fails (AttributeError)
    "!!int 1.5", "!!float x",  # ValueError from the explicit tags
    "[" * 2000 + "]" * 2000,  # RecursionError in the composer
    "\ud800",  # a character the YAML reader refuses
])
def test_values_yaml_cannot_read_are_config_errors(value):
    """Was: the YAML library's own exception (ParserError, ConstructorError, ValueError, AttributeError,
    RecursionError, ReaderError) escaping ``--set``."""
    with pytest.raises(ConfigError, match="invalid YAML value"):
        load_run_config(None, [f"run.name={value}"])


@pytest.mark.parametrize("assignment", ["sasrec=3", "sasrec.epochs.x=1", "=1", "..=1", "nokey", "run.seed=true"])
def test_bad_keys_and_types_are_config_errors(assignment):
    with pytest.raises(ConfigError):
        load_run_config(None, [assignment])


def test_int_beyond_float_range_is_a_config_error():
    """Was: OverflowError from the range check float()ing an int too large for a float."""
    with pytest.raises(ConfigError, match="run.seed"):
        load_run_config(None, ["run.seed=" + "1" * 400])


def test_int_beyond_float_range_for_a_float_field_is_a_config_error():
    with pytest.raises(ConfigError, match="data.valid_frac"):
        load_run_config(None, ["data.valid_frac=" + "1" * 400])
