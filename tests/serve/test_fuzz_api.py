"""Fuzzing the serving API's request bodies: random types for every field, huge numbers, unknown keys, nested
junk, non-JSON bytes and wrong content types get a 4xx naming the field, or a 200 — never a 5xx
(``thinkrec.testing.fuzz.ApiFuzzer``; the large campaign is ``benchmarks/fuzz.py``)."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinkrec.testing.fuzz import REJECTED, ApiFuzzer


@pytest.fixture(scope="module")
def fuzzer(funnel):
    with ApiFuzzer(funnel) as f:
        yield f


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False))
def test_random_bodies_get_200_or_a_4xx_naming_the_field(fuzzer, rnd):
    assert fuzzer.case(rnd).status in ("ok", REJECTED)


def test_unmutated_bodies_are_served(fuzzer):
    # valid bodies with optional fields may be refused by design (e.g. `as_of` for a user without that example)
    outcomes = [fuzzer.case(random.Random(seed), n_mutations=0) for seed in range(20)]
    assert sum(o.status == "ok" for o in outcomes) >= 10


def _error(r, status, field):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field, err
    return err


@pytest.mark.parametrize("body", [
    b'{"user": "u\xff\xff"}',  # not UTF-8
    b"[" * 100_000,  # nested deeper than the JSON decoder's recursion limit
    b"\x00\x00\x00{}",
])
def test_undecodable_bodies_are_400_naming_the_body(fuzzer, body):
    """Was: FastAPI's bare ``{"detail": "There was an error parsing the body"}``, naming no field."""
    r = fuzzer.client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert "body" in _error(r, 400, "body")["message"]


def test_wrong_content_type_and_unknown_route(fuzzer):
    r = fuzzer.client.post("/v1/recommend", content=b'{"user": "1"}', headers={"content-type": "text/plain"})
    _error(r, 422, "body")
    _error(fuzzer.client.get("/v1/nothing-here"), 404, "path")
    _error(fuzzer.client.get("/v1/recommend"), 405, "path")
