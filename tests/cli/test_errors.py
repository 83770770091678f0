"""User errors print one clear line (exit code 2); anything else is an internal error: its traceback and a hint
to report it (exit code 1) — a bug no longer passes for a user's mistake because it happens to be a KeyError."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from thinkrec import cli
from thinkrec.errors import (
    ConfigError,
    DataFormatError,
    DataRequirementError,
    InvalidArgumentError,
    MissingInputError,
    UnknownNameError,
    UserError,
)

runner = CliRunner()
RUN = ["run", "--config", "configs/synthetic.yaml", "--set", "data.options.n_users=60", "--set", "data.options.n_items=64",
       "--set", "data.options.n_impressions=0", "--set", "data.options.max_seq_len=20",
       "--set", "data.options.list_len=10"]


def _run(tmp_path: Path, *extra: str):
    return runner.invoke(cli.app, [*RUN, "--set", f"run.out_dir={tmp_path}", "--name", "t", *extra])


@pytest.mark.parametrize("exc", [KeyError("item_id"), ValueError("operands could not be broadcast"),
                                 IndexError("index 3 is out of bounds"), FileNotFoundError(2, "No such file", "x.bin")],
                         ids=lambda e: type(e).__name__)
def test_an_internal_error_shows_its_traceback_and_asks_for_a_report(tmp_path, monkeypatch, exc) -> None:
    def broken(ctx):
        raise exc

    monkeypatch.setattr("thinkrec.pipeline.stages.data.run_data", broken)
    res = _run(tmp_path)
    assert res.exit_code == 1, res.output
    assert "Traceback (most recent call last)" in res.output and "in broken" in res.output
    assert f"internal error: {type(exc).__name__}" in res.output and cli.BUG_HINT in res.output
    assert "error: " not in res.output.replace("internal error: ", "")  # not dressed up as the user's mistake


@pytest.mark.parametrize("exc", [DataFormatError("items.csv", "not a number", line=3, field="price"),
                                 DataRequirementError("dataset 'x' has no logged impressions"),
                                 MissingInputError("data/x.inter: dataset file not found"),
                                 UnknownNameError("unknown dataset 'nope'"), ConfigError(["a.b: bad", "c: worse"])],
                         ids=lambda e: type(e).__name__)
def test_a_user_error_prints_its_message_alone(tmp_path, monkeypatch, exc) -> None:
    def refuses(ctx):
        raise exc

    monkeypatch.setattr("thinkrec.pipeline.stages.data.run_data", refuses)
    res = _run(tmp_path)
    assert res.exit_code == 2, res.output
    out = "".join(ln for ln in res.output.splitlines(True) if not ln.endswith(": building\n"))  # progress lines
    assert out.startswith("error: " + str(exc).splitlines()[0]) and "Traceback" not in res.output
    assert cli.BUG_HINT not in res.output


def test_user_errors_keep_their_builtin_bases() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(DataFormatError, ValueError)
    assert issubclass(UnknownNameError, KeyError) and issubclass(UnknownNameError, ValueError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(InvalidArgumentError, ValueError)
    assert all(issubclass(c, UserError) for c in (ConfigError, DataFormatError, DataRequirementError, MissingInputError,
                                                  UnknownNameError, InvalidArgumentError))
    assert str(UnknownNameError("unknown user 'u1'")) == "unknown user 'u1'"  # not quoted like a KeyError
    # the old import paths still work
    from thinkrec.data import DataFormatError as A
    from thinkrec.data.dataset import DataFormatError as B
    from thinkrec.utils.config import ConfigError as C

    assert A is B is DataFormatError and C is ConfigError


def test_data_commands_tell_user_errors_from_bugs(tmp_path, monkeypatch) -> None:
    res = runner.invoke(cli.app, ["data", "stats", "--dataset", "no-such-dataset"])
    assert res.exit_code == 2 and res.output.startswith("error: unknown dataset 'no-such-dataset'"), res.output
    res = runner.invoke(cli.app, ["data", "stats", "--dataset", str(tmp_path / "none.csv"), "--format", "csv"])
    assert res.exit_code == 2 and "no such file or folder to load as 'csv'" in res.output, res.output
    (tmp_path / "odd.bin").write_text("?")
    res = runner.invoke(cli.app, ["data", "stats", "--dataset", str(tmp_path / "odd.bin")])
    assert res.exit_code == 2 and "cannot tell the dataset format" in res.output, res.output

    def loader_bug(*a, **k):
        return {}["user_id"]  # a KeyError from inside a loader is thinkrec's bug, not the user's

    monkeypatch.setattr("thinkrec.data.load_dataset", loader_bug)
    res = runner.invoke(cli.app, ["data", "stats", "--dataset", "synthetic"])
    assert res.exit_code == 1 and "Traceback" in res.output and cli.BUG_HINT in res.output, res.output


def test_a_bad_config_and_a_missing_run_directory_are_user_errors(tmp_path) -> None:
    res = runner.invoke(cli.app, ["run", "--config", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output
    res = runner.invoke(cli.app, ["recommend", "--run", str(tmp_path), "--user", "u1"])
    assert res.exit_code == 2 and "not a run directory" in res.output and "Traceback" not in res.output
    (tmp_path / "config.yaml").write_text("{}\n")
    res = runner.invoke(cli.app, ["serve", "--run", str(tmp_path), "--max-batch", "0", "--per-source", "0"])
    assert res.exit_code == 2 and res.output.startswith("error: 2 config errors:"), res.output
    assert "serve.batching.max_batch: must be ≥ 1 (got 0)" in res.output and "serve.per_source" in res.output
