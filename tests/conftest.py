"""Session fixtures: a tiny trained funnel (synthetic data, merged candidates, TIGER + S²GR + SASRec +
co-occurrence, DNN and EGLR re-rankers) shared by the serving and generation tests (copy it before changing it)."""

from pathlib import Path

import pytest

import thinkrec
from tests.pipeline.test_funnel import _overrides


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("served")
    return Path(thinkrec.run("configs/synthetic.yaml", log=lambda m: None, **_overrides(out, ["run.name=s"])))


@pytest.fixture(scope="session")
def funnel(served_run):
    return thinkrec.load(served_run)
