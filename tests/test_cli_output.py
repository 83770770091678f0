"""Terminal output a person can read: at 80 columns and piped to a file, every table keeps its numbers whole (4
decimals, never ``0.0…``), no line is wider than the console, and progress bars appear only on a terminal
(library code reports progress only to a callback someone installed)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.pipeline.test_report_html import EVIL_MODEL, make_run_dir, tiny_run
from thinkrec import cli
from thinkrec.utils import progress
from thinkrec.utils.io import read_json

runner = CliRunner()
PROGRESS_MARKS = ("\r", "\x1b", "╸", "╺")  # carriage returns and escapes of a live display, a bar's half cells
ELAPSED = re.compile(r"\b\d:\d\d:\d\d\b")  # the bars' elapsed-time column


def check_legible(text: str, width: int) -> None:
    assert "…" not in text, text
    for mark in PROGRESS_MARKS:
        assert mark not in text, (mark, text)
    assert not ELAPSED.search(text), text
    long = [ln for ln in text.splitlines() if len(ln) > width]
    assert not long, f"lines over {width} columns: {long}"


def metric_cells(text: str) -> set[str]:
    """Every number printed in a table cell."""
    return {c.strip() for ln in text.splitlines() if "│" in ln for c in ln.split("│")[1:-1] if c.strip()}


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch):
    """The CLI console writing to a string buffer (not a terminal), at ``COLUMNS`` if given."""
    buf = io.StringIO()
    monkeypatch.setattr(cli.console, "_file", buf)  # (None again afterwards: sys.stdout at each print)

    def run(fn, *args, columns: int | None = 80) -> str:
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", str(columns))
        buf.seek(0)
        buf.truncate()
        fn(*args)
        return buf.getvalue()

    return run


def test_printed_tables_keep_every_number_at_80_columns_and_piped(tmp_path: Path, captured) -> None:
    root = make_run_dir(tmp_path / "a-run-directory-with-a-rather-long-name-to-print-in-titles")
    test = read_json(root / "metrics.json")["test"]
    rerank = read_json(root / "rerank" / "metrics.json")["models"]
    llm = read_json(root / "llm" / "metrics.json")
    for columns, width in ((80, 80), (None, cli.PIPED_WIDTH), (120, 120)):
        out = captured(cli._print_metrics, root, columns=columns)
        check_legible(out, width)
        cells = metric_cells(out)
        for name, r in test.items():
            if name == "funnel":
                r = {"metrics": r["models"][r["final"]]["metrics"]}
            if name != "paired_tests":
                assert {f"{v:.4f}" for v in r["metrics"].values()} <= cells, (columns, name)
        for t in [*test["paired_tests"].values(), *test["funnel"]["paired_tests"].values()]:
            assert f"{t['diff']:+.4f}" in cells and f"[{t['diff_low']:+.4f}, {t['diff_high']:+.4f}]" in cells
        assert EVIL_MODEL in out  # names are printed as they are, not read as rich markup

        out = captured(cli._print_rerank, root, columns=columns)
        check_legible(out, width)
        cells = metric_cells(out)
        for name, m in rerank.items():
            for k in ("ndcg@5", "ndcg@10", "map@5", "map@10", "recall@1", "recall@5", "evaluator_score", "latency_ms"):
                assert f"{m[k]:.4f}" in cells, (columns, name, k)
        assert f"{rerank['eglr']['reasoning_steps_per_list']:.4f}" in cells

        out = captured(cli._print_llm, root, columns=columns)
        check_legible(out, width)
        cells = metric_cells(out)
        for name, m in llm["metrics"].items():
            assert {f"{m[k]:.4f}" for k in ("recall@1", "recall@5", "ndcg@5")} <= cells, name
            assert f"{llm['metrics_all_lists'][name]['ndcg@5']:.4f}" in cells


def test_a_wide_table_is_split_at_80_columns_not_squeezed(tmp_path: Path, captured) -> None:
    root = make_run_dir(tmp_path / "r", model="a-re-ranker-with-a-long-name", dataset="d")
    narrow = captured(cli._print_rerank, root, columns=80)
    wide = captured(cli._print_rerank, root, columns=200)
    assert narrow.count("(continued)") >= 1 and "(continued)" not in wide
    assert metric_cells(narrow) >= metric_cells(wide) - {"a-re-ranker-with-a-long-name"}
    assert all(len(ln) <= 80 for ln in narrow.splitlines())
    check_legible(wide, 200)


def test_console_width_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    piped = cli.CliConsole(file=io.StringIO())
    assert not piped.is_terminal and piped.width == cli.PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "60")
    assert piped.width == 80  # never narrower than the tables are built for
    monkeypatch.setenv("COLUMNS", "132")
    assert piped.width == 132
    tty = cli.CliConsole(file=io.StringIO(), force_terminal=True)
    monkeypatch.setenv("COLUMNS", "50")
    assert tty.is_terminal and tty.width == 80  # max(80, terminal)
    monkeypatch.setenv("COLUMNS", "150")
    assert tty.width == 150
    assert cli.CliConsole(file=io.StringIO(), width=64).width == 64  # an explicit width wins


def test_progress_is_silent_unless_a_callback_is_installed() -> None:
    events: list[tuple[str, int, int]] = []
    progress.report("nobody listens", 1, 2)  # a no-op
    with progress.progress_callback(lambda *e: events.append(e)):
        assert progress.current() is not None
        progress.report("work", 1, 2)
        with progress.progress_callback(None):  # silenced inside
            progress.report("hidden", 1, 1)
        progress.report("work", 2, 2)
    progress.report("after", 1, 1)
    assert events == [("work", 1, 2), ("work", 2, 2)] and progress.current() is None


def test_embedding_reports_progress_per_chunk_and_gives_the_same_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from thinkrec.tokenize import embed

    class Fake:
        max_seq_length = 256

        def encode(self, texts, batch_size, normalize_embeddings, **_):
            return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(embed, "_load_model", lambda path, device: Fake())
    texts = [f"item {i} " * (i % 5 + 1) for i in range(150)]
    cfg = embed.EmbedConfig(cache_dir=None, batch_size=4)  # 64 texts per encoder call: 3 calls
    events: list[tuple[str, int, int]] = []
    with progress.progress_callback(lambda *e: events.append(e)):
        x = embed.embed_texts(texts, cfg)
    assert events == [("embed items", 1, 3), ("embed items", 2, 3), ("embed items", 3, 3)]
    np.testing.assert_array_equal(x, Fake().encode(texts, 4, True))
    np.testing.assert_array_equal(embed.embed_texts(texts, cfg), x)  # silent without a callback, same vectors


def test_cli_on_a_real_run_piped_at_80_columns(tmp_path_factory: pytest.TempPathFactory) -> None:
    root, _ = tiny_run(tmp_path_factory)
    res = runner.invoke(cli.app, ["evaluate", "--run", str(root)], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    check_legible(res.output, 80)
    cells = metric_cells(res.output)
    test = read_json(root / "metrics.json")["test"]
    for name in ("popularity", "sasrec"):
        assert {f"{v:.4f}" for v in test[name]["metrics"].values()} <= cells, name
    assert "report.html" in res.output.replace("\n", "")

    res = runner.invoke(cli.app, ["models"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    check_legible(res.output, 80)
    res = runner.invoke(cli.app, ["data", "stats", "--dataset", str(root / "data")], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    check_legible(res.output, 80)
    stats = read_json(root / "data" / "meta.json")["stats"]
    assert f"{stats['interactions']:,}" in res.output and f"{stats['seq_len_mean']:.4f}" in res.output
