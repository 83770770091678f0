"""The ``thinkrec`` command line (typer + rich)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="thinkrec — reasoning-enhanced generative recommendation.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Inspect and prepare datasets.", no_args_is_help=True)
train_app = typer.Typer(help="Train one stage of the funnel.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")

#: Narrowest layout the tables are built for, and the width of output that goes to a file or a pipe.
MIN_WIDTH, PIPED_WIDTH = 80, 100


class CliConsole(Console):
    """rich's Console with the CLI's width, decided at each print (tests and pipes swap ``sys.stdout``): on a
    terminal max(80, its width); piped or redirected, ``$COLUMNS`` when set (at least 80), else 100 — not rich's
    80, at which wide tables used to squeeze every number to ``0.0…``. A width set explicitly wins."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._fixed_width = kwargs.get("width")

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._fixed_width is not None:
            return size
        columns = self._environ.get("COLUMNS", "")
        if self.is_terminal:
            width = max(MIN_WIDTH, int(columns) if columns.isdigit() else _terminal_width())
        else:
            width = max(MIN_WIDTH, int(columns)) if columns.isdigit() else PIPED_WIDTH
        return ConsoleDimensions(width, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        width, height = new_size
        self._width, self._height, self._fixed_width = width, height, width

    @property
    def width(self) -> int:
        return self.size.width

    @width.setter
    def width(self, width: int) -> None:
        self._width = self._fixed_width = width


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(1).columns or MIN_WIDTH
    except (OSError, ValueError):
        return MIN_WIDTH


# under torchrun the ranks other than 0 print nothing but their errors (rank 0 reports for the launch)
console = CliConsole(quiet=os.environ.get("RANK", "0") != "0")
P, R = ParamSpec("P"), TypeVar("R")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML preset (configs/*.yaml).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config value: key.sub=value (repeatable).")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="Named dataset or prepared folder.")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="Format of a dataset given as a path (`thinkrec models` lists them).")]
RootOpt = Annotated[str | None, typer.Option("--data-root", help="Folder holding the datasets (default: $THINKREC_DATA or ../shared/data).")]


def _fail(msg: str) -> None:
    # soft_wrap: an error naming a file and line stays on one line (copyable, greppable) at any terminal width;
    # markup off for the message itself, so brackets in a path or value are printed as they are
    if console.quiet:
        print(f"error (rank {os.environ.get('RANK')}): {msg}", file=sys.stderr)
        raise typer.Exit(2)
    console.print("[bold red]error:[/] ", end="")
    console.print(msg, soft_wrap=True, markup=False)
    raise typer.Exit(2)


#: Printed under the traceback of an internal error (exit code 1).
BUG_HINT = ("This is a bug in thinkrec, not a mistake in your config or data. Please report it with the traceback "
            "above, the command you ran and its config.yaml.")


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """User errors (:class:`thinkrec.errors.UserError`: a bad config value, bad or insufficient data, a missing
    file or an unknown name the user gave) print their one-line message and exit with code 2; any other
    exception is an internal error: its traceback and :data:`BUG_HINT` go to stderr, exit code 1."""
    import traceback

    from thinkrec.errors import UserError

    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except UserError as exc:
        _fail(str(exc))
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(tb, end="", file=sys.stderr)
        print(f"internal error: {type(exc).__name__}: {exc}\n{BUG_HINT}", file=sys.stderr)
        raise typer.Exit(1) from None


def _reported_command(fn: Callable[P, R]) -> Callable[P, R]:
    """A command whose whole body runs under :func:`_reported` (typer reads the signature through ``wraps``)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _reported():
            return fn(*args, **kwargs)

    return wrapper


def _load_config(config: Path | None, sets: list[str] | None, dataset: str | None = None, data_root: str | None = None, name: str | None = None):
    from thinkrec.pipeline.config import load_run_config

    overrides = list(sets or [])
    if dataset:
        overrides.append(f"data.dataset={dataset}")
    if data_root:
        overrides.append(f"data.data_root={data_root}")
    if name:
        overrides.append(f"run.name={name}")
    cfg = load_run_config(config, overrides)
    if cfg.run.name == "default" and not name:
        cfg.run.name = Path(cfg.data.dataset).name
    return cfg


#: Progress bars shown at once (the most recently updated unfinished tasks).
MAX_BARS = 3


@contextlib.contextmanager
def _progress() -> Iterator:
    """``update(task, step, total)`` drives transient rich progress bars, only on a terminal (piped output and
    logs get the log lines alone). The same callback is installed for library code (embedding, re-ranker
    epochs, evaluation batches, LLM phases: :mod:`thinkrec.utils.progress`), which is silent without it."""
    from thinkrec.utils.progress import progress_callback

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as prog:
        tasks: dict[str, int] = {}  # most recently updated last

        def update(stage: str, step: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(escape(stage), total=total)
            elif step <= 1:
                prog.reset(tasks[stage], total=total)
            tasks[stage] = tasks.pop(stage)
            prog.update(tasks[stage], completed=step, total=total, visible=step < total)
            for old in list(tasks)[:-MAX_BARS]:
                prog.update(tasks[old], visible=False)

        with progress_callback(update):
            yield update


def _run(cfg, stages: list[str] | None = None, run_dir: Path | None = None, lock_wait: float = 0.0) -> Path:
    """The pipeline: the whole config is checked before any work starts, the data right after it loads (the
    commands run under :func:`_reported`: user errors print one line, internal ones their traceback)."""
    from thinkrec.pipeline.run import run_pipeline

    with _progress() as update:
        return run_pipeline(cfg, stages, log=lambda m: console.print(m, highlight=False), progress=update, run_dir=run_dir,
                            lock_wait=lock_wait)


def _fmt4(v: object) -> str:
    """A metric cell: 4 decimals (ints as they are, nothing for a missing value)."""
    if v is None or v == "":
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(title: str | None, label: str, headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str], str | None]],
           cols: Sequence[int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(label, overflow="fold")  # wraps only if a single number column beside it cannot fit
    for j in cols:
        width = max([len(headers[j]), *(len(cells[j]) for _, cells, _ in rows)])
        table.add_column(headers[j], justify="right", no_wrap=True, overflow="fold", min_width=width)
    for name, cells, style in rows:
        table.add_row(escape(name), *(escape(cells[j]) for j in cols), style=style)
    return table


def print_table(title: str, label: str, headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str], str | None]]) -> None:
    """A label column and right-aligned number columns (``rows``: label, cells, rich style or None), printed as
    one table when it fits the console width, else as a few tables with as many columns each, the label column
    repeated: rich never squeezes a number into ``…`` (number columns do not wrap and keep their width)."""
    n, width = len(headers), console.width
    unbounded = console.options.update(width=10 * width + 1000)  # the natural width, not clamped to the console's
    tables = [_table(title, label, headers, rows, range(n))]
    for n_tables in range(1, n + 1):
        size = -(-n // n_tables)
        groups = [list(range(lo, min(lo + size, n))) for lo in range(0, n, size)]
        tables = [_table(title if i == 0 else f"{title} (continued)", label, headers, rows, g) for i, g in enumerate(groups)]
        if all(Measurement.get(console, unbounded, t).maximum <= width for t in tables):
            break
    for t in tables:
        console.print(t)


def _short_metric(k: str) -> str:
    return k.replace("recall@", "R@").replace("ndcg@", "N@").replace("map@", "MAP@").replace("mrr", "MRR")


def _print_metrics(root: Path) -> None:
    from thinkrec.utils.io import read_json

    if not (root / "metrics.json").exists():  # a run without the evaluate stage
        return
    m = read_json(root / "metrics.json")["test"]
    models = [k for k in m if k not in ("paired_tests", "funnel")]
    if not models:
        return
    keys = list(m[models[0]]["metrics"])
    funnel = m.get("funnel")
    rows: list[tuple[str, list[str], str | None]] = []
    if funnel:  # the product: the final list, beside every single stage
        final = funnel["models"][funnel["final"]]["metrics"]
        rows.append((f"funnel ({funnel['final']})", [_fmt4(final.get(k)) for k in keys], "bold"))
        for name, r in funnel["models"].items():
            if name != funnel["final"]:
                rows.append((f"funnel-{name}", [_fmt4(r["metrics"].get(k)) for k in keys], None))
    for name in models:
        rows.append((name, [_fmt4(m[name]["metrics"].get(k)) for k in keys], None))
    print_table(f"test metrics — {root}", "model", [_short_metric(k) for k in keys], rows)
    _print_paired("paired tests, the best single model vs the others (NDCG@10)", m.get("paired_tests", {}), "p_ttest")
    if funnel:
        _print_paired(f"paired tests, the final list vs every single source ({funnel['metric']})",
                      funnel.get("paired_tests", {}), "p_bootstrap")


def _print_paired(title: str, tests: dict, p_key: str) -> None:
    if not tests:
        return
    label = {"p_ttest": "p (t-test)", "p_bootstrap": "p (bootstrap)"}[p_key]
    print_table(title, "pair", ["Δ", "95 % CI of Δ", label], [
        (pair.replace("_vs_", " vs "), [f"{t['diff']:+.4f}", f"[{t['diff_low']:+.4f}, {t['diff_high']:+.4f}]",
                                        f"{t[p_key]:.3g}"], None) for pair, t in tests.items()])


@data_app.command("stats")
@_reported_command
def data_stats(dataset: DatasetOpt = "synthetic", data_root: RootOpt = None, format_: FormatOpt = None) -> None:
    """Print users, items, interactions and sequence statistics of a dataset."""
    from thinkrec.data import load_dataset

    ds = load_dataset(dataset or "synthetic", data_root, format=format_)
    stats = ds.stats()
    print_table(f"dataset {ds.name}", "statistic", ["value"], [
        (k, [f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else _fmt4(v)], None) for k, v in stats.items()])


@data_app.command("prepare")
@_reported_command
def data_prepare(
    dataset: DatasetOpt = "synthetic",
    data_root: RootOpt = None,
    format_: FormatOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/<dataset>/data).")] = None,
) -> None:
    """Load a dataset and write it as parquet (interactions, items, users[, impressions]) + meta.json."""
    from thinkrec.data import load_dataset

    ds = load_dataset(dataset or "synthetic", data_root, format=format_)
    target = out or Path("runs") / Path(dataset or "synthetic").name / "data"
    ds.save(target)
    console.print(f"wrote {target} ({ds.n_users:,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions)")


@train_app.command("sasrec")
@_reported_command
def train_sasrec_cmd(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, data_root: RootOpt = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under run.out_dir).")] = None,
) -> None:
    """Train SASRec (full-softmax CE, early stopping on validation NDCG@10) into a run directory."""
    cfg = _load_config(config, set_, dataset, data_root, name)
    root = _run(cfg, ["data", "sasrec"])
    console.print(f"model: {root / 'sasrec' / 'model.safetensors'}")


@train_app.command("retriever")
@_reported_command
def train_retriever_cmd(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, data_root: RootOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="tiger | s2gr (`thinkrec models`)")] = "s2gr",
    name: Annotated[str | None, typer.Option(help="Run name (folder under run.out_dir).")] = None,
) -> None:
    """Stage 2: train a generative retriever (TIGER, or S²GR with latent thinking) over the run's Semantic IDs,
    resuming from its last checkpoint, then evaluate it on the test split."""
    from thinkrec.retrieval.stage import RETRIEVERS

    if model not in RETRIEVERS:
        _fail(f"--model must be one of {', '.join(RETRIEVERS.names())}, got {model!r}")
    cfg = _load_config(config, [*(set_ or []), f"retrieval.models=[{model}]"], dataset, data_root, name)
    root = _run(cfg, ["data", "tokenize", "retrieval", "evaluate", "report"])
    _print_metrics(root)
    console.print(f"model: {root / 'retrieval' / model}")


def _print_rerank(root: Path) -> None:
    from thinkrec.utils.io import read_json

    path = root / "rerank" / "metrics.json"
    if not path.exists():
        return
    res = read_json(path)
    models = res.get("models", {})
    short = {"ndcg@5": "N@5", "ndcg@10": "N@10", "map@5": "MAP@5", "map@10": "MAP@10", "recall@1": "R@1",
             "recall@5": "R@5", "expected_clicks": "clicks", "evaluator_score": "eval", "reasoning_steps_per_list": "steps",
             "latency_ms": "ms"}
    keys = [k for k in short if any(k in m for m in models.values())]
    print_table(f"re-ranking ({res.get('source')}) — test lists", "model", [short[k] for k in keys],
                [(name, [_fmt4(m.get(k)) for k in keys], None) for name, m in models.items()])


@train_app.command("reranker")
@_reported_command
def train_reranker_cmd(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, data_root: RootOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="eglr | prm | dlcm | seq2slate | egrerank | dnn | lightgbm")] = "eglr",
    name: Annotated[str | None, typer.Option(help="Run name (folder under run.out_dir).")] = None,
) -> None:
    """Stage 3: train a re-ranker (and the list evaluator it is compared and RL-trained against) on the dataset's
    impression lists, or on the retriever's top-K lists when the dataset logs no impressions; compare with the
    initial order on the test lists."""
    from thinkrec.rerank.models import RERANKERS

    if model not in RERANKERS or model == "initial":
        _fail(f"--model must be one of {', '.join(n for n in RERANKERS.names() if n != 'initial')}, got {model!r}")
    cfg = _load_config(config, [*(set_ or []), f"rerank.models=[initial,{model}]"], dataset, data_root, name)
    root = _run(cfg, ["data", "rerank", "report"])
    _print_rerank(root)
    console.print(f"model: {root / 'rerank' / model}")


def _print_llm(root: Path) -> None:
    from thinkrec.utils.io import read_json

    path = root / "llm" / "metrics.json"
    if not path.exists():
        return
    res = read_json(path)
    every = res.get("metrics_all_lists", {})
    print_table(f"LLM re-ranker ({res['model']}) — {res['eval_lists_with_target']} test lists with the true item",
                "phase", ["R@1", "R@5", "N@5", "N@5 all lists", "malformed"],
                [(name, [_fmt4(m["recall@1"]), _fmt4(m["recall@5"]), _fmt4(m["ndcg@5"]),
                         _fmt4(every.get(name, {}).get("ndcg@5")), str(m["malformed"])], None)
                 for name, m in res["metrics"].items()])
    console.print(f"LLM order used by the funnel: {res.get('deploy_why') or 'not validated'}", highlight=False)
    if not res.get("deploy"):
        cfg = res.get("config", {})
        sft, rl = cfg.get("sft", {}), cfg.get("rl", {})
        console.print(f"  this budget ({res.get('traces', {}).get('target', {}).get('accepted', '?')} traces, "
                      f"{sft.get('steps')} SFT steps × {sft.get('batch_size')}, {rl.get('steps')} DAPO steps) is too "
                      f"small for {res['model']} to learn to re-rank: it stays near a random order of the candidates "
                      "(BENCHMARKS.md, LLM re-ranker); the served list is the funnel's own", highlight=False)


@train_app.command("llm-reranker")
@_reported_command
def train_llm_reranker_cmd(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, data_root: RootOpt = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under run.out_dir).")] = None,
) -> None:
    """Stage 4 (GR2): add SID tokens to an LLM (llm.model: a Hugging Face path, or gemma3-270m), align it, sample
    teacher traces (llm.teacher.kind: programmatic | openai | hf; target and/or reject sampling), SFT, DAPO, and
    evaluate every phase on the re-ranking stage's test lists. Earlier stages run first if they are not done."""
    cfg = _load_config(config, set_, dataset, data_root, name)
    root = _run(cfg, ["data", "tokenize", "retrieval", "rerank", "llm", "report"])
    _print_llm(root)
    console.print(f"adapter: {root / 'llm' / 'adapter'}")


@app.command("serve-teacher")
@_reported_command
def serve_teacher_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Hugging Face causal-LM path (or gemma3-270m).")],
    radix: Annotated[str, typer.Option(help="SID codes per level, comma-separated (adds the SID tokens).")] = "256,256,256",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
    max_reasoning_tokens: Annotated[int, typer.Option(help="Reasoning length cap of constrained answers.")] = 64,
) -> None:
    """Serve a local model as an OpenAI-compatible teacher (/v1/chat/completions) with ranking-constrained answers."""
    import time

    from thinkrec.llm.model import add_sid_tokens, load_causal_lm
    from thinkrec.llm.server import OpenAICompatibleServer, hf_backend

    lm, tok = load_causal_lm(model)
    add_sid_tokens(lm, tok, [int(r) for r in radix.split(",")])
    with OpenAICompatibleServer(hf_backend(lm, tok, max_reasoning_tokens), model, port=port) as srv:
        console.print(f"teacher at {srv.base_url} (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def _read_users(spec: str, funnel) -> list[str]:
    if spec == "all":
        return funnel.dataset.users.sort("user")["user_id"].to_list()
    path = Path(spec)
    if not path.exists():
        _fail(f"--users {spec}: no such file (give a file with one user id per line, or 'all')")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


@app.command("recommend")
@_reported_command
def recommend_cmd(
    run: Annotated[Path, typer.Option("--run", "-r", help="Trained run directory.")],
    user: Annotated[list[str] | None, typer.Option("--user", "-u", help="User id as in the dataset (repeatable).")] = None,
    users: Annotated[str | None, typer.Option("--users", help="File of user ids (one per line), or 'all'.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write all recommendations to this parquet file.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    retriever: Annotated[str | None, typer.Option("--retriever", help="Override funnel.json's retriever.")] = None,
    no_rerank: Annotated[bool, typer.Option("--no-rerank", help="The retriever's order only.")] = False,
    as_of: Annotated[str | None, typer.Option("--as-of", help="test | valid: the history evaluation saw.")] = None,
    exclude_seen: Annotated[bool | None, typer.Option("--exclude-seen/--keep-seen", help="Drop items of the history (default: the run's seen-item policy, eval.seen).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Thinking tokens' nearest clusters (S²GR) and EGLR's reasoning per position.")] = False,
    batch_size: Annotated[int, typer.Option(help="Users per batch.")] = 256,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: the run's run.device).")] = None,
) -> None:
    """Recommend with a trained funnel (thinkrec.load(run).recommend): candidates → re-ranking, per funnel.json."""
    import time

    import thinkrec

    funnel = thinkrec.load(run, device)
    ids = list(user or []) + (_read_users(users, funnel) if users else [])
    if not ids:
        _fail("give --user ID (repeatable) or --users FILE|all")
    rerank = None if no_rerank else True
    options = {"k": k, "explain": explain, "exclude_seen": exclude_seen, "as_of": as_of, "retriever": retriever,
               "reranker": rerank}
    t0 = time.perf_counter()
    if out is not None:  # sharded over the ranks of a torchrun launch (thinkrec.pipeline.batch)
        from thinkrec.pipeline.batch import recommend_to_parquet, world

        rank, size = world()
        with _progress() as update:
            served = recommend_to_parquet(funnel, ids, out, batch_size, lambda i, n: update("recommend", i, n), **options)
        wall = time.perf_counter() - t0
        if rank == 0:
            console.print(f"wrote {out}: {len(ids):,} users × top-{k} over {size} process(es) "
                          f"({served / max(wall, 1e-9):,.0f} users/s per process)")
        return
    results = []
    with _progress() as update:
        for lo in range(0, len(ids), batch_size):
            results += funnel.recommend(users=ids[lo: lo + batch_size], batch_size=batch_size, **options)
            update("recommend", min(lo + batch_size, len(ids)), len(ids))
    for r in results:
        stages = " → ".join(f"{s} {n}" for s, n in r.stages.items() if n)
        console.print(f"[bold]user {r.user_id}[/] — {stages}; last {min(5, len(r.history))} of {len(r.history)} items: "
                      + ", ".join(r.history[-5:]), highlight=False)
        table = Table(title=f"top-{k}")
        for col in ("#", "item", "title", "score", "retriever #", "SID"):
            table.add_column(col, overflow="fold")
        if explain:
            table.add_column("thinking → nearest cluster (dominant categories) ✓/✗ agrees with next code", overflow="fold")
        for i, it in enumerate(r.items, 1):
            cells = [str(i), it.item_id, it.title, f"{it.score:.3f}", str(it.ranks.get("retriever", it.ranks.get("candidates"))), it.sid or ""]
            if explain:
                from thinkrec.retrieval.explain import thought_lines

                cells.append("\n".join(thought_lines((it.explanation or {}).get("thinking", []))) or "(no thinking tokens)")
            table.add_row(*cells)
        console.print(table)
        if explain and r.explanation and r.explanation.get("thinking_agreement"):
            console.print("thinking-token / next-code cluster agreement over these beams: "
                          + ", ".join(f"level {lv + 1}: {a:.0%}" for lv, a in r.explanation["thinking_agreement"].items()))
    console.print(f"{len(results)} users in {time.perf_counter() - t0:.2f}s", style="dim")


@app.command("models")
@_reported_command
def models_cmd() -> None:
    """List every registered model family and dataset format, one line each."""
    from thinkrec.data.registry import DATASETS, FORMATS
    from thinkrec.llm.teacher import TEACHERS
    from thinkrec.pipeline.scorers import SCORERS
    from thinkrec.rerank.models import RERANKERS
    from thinkrec.tokenize.quantizers import QUANTIZERS

    for title, reg in (("next-item scorers (retrieval.models, rerank.candidates)", SCORERS),
                       ("re-rankers (rerank.models)", RERANKERS), ("quantizers (tokenize.method)", QUANTIZERS),
                       ("LLM teachers (llm.teacher.kind)", TEACHERS), ("dataset formats (data.format)", FORMATS),
                       ("named datasets (data.dataset)", DATASETS)):
        table = Table(title=title, title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("description")
        for e in reg.entries():
            table.add_row(e.name, e.description)
        console.print(table)


@app.command("tokenize")
@_reported_command
def tokenize_cmd(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, data_root: RootOpt = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help="rqkmeans | rqkmeans_balanced | rqvae | coba")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under run.out_dir).")] = None,
) -> None:
    """Stage 1: embed item text, fit a quantizer, build bijective Semantic IDs and print the SID report."""
    sets = list(set_ or [])
    if method:
        sets.append(f"tokenize.method={method}")
    cfg = _load_config(config, sets, dataset, data_root, name)
    root = _run(cfg, ["data", "tokenize"])
    console.print((root / "sids" / "report.md").read_text(), markup=False, highlight=False)
    console.print(f"Semantic IDs: {root / 'sids'}")


@app.command("evaluate")
@_reported_command
def evaluate_cmd(
    run: Annotated[Path, typer.Option("--run", "-r", help="Run directory to evaluate.")],
    set_: SetOpt = None,
) -> None:
    """Evaluate every trained model of a run on the test split (full ranking, CIs, paired tests)."""
    if not (run / "config.yaml").exists():
        _fail(f"{run}: not a run directory (no config.yaml)")
    cfg = _load_config(run / "config.yaml", set_, name=run.name)
    root = _run(cfg, ["evaluate", "report"], run_dir=run)
    _print_metrics(root)


@app.command("run")
@_reported_command
def run_cmd(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, data_root: RootOpt = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under run.out_dir).")] = None,
    with_llm: Annotated[bool, typer.Option("--with-llm", help="Also run stage 4, the GR2 LLM re-ranker (needs the llm extra).")] = False,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait while another run holds the run directory.")] = 0.0,
) -> None:
    """Run the whole funnel: data → baselines → Semantic IDs → retrieval → re-ranking (→ LLM re-ranking) →
    evaluation → report. A killed run resumes where it stopped when rerun (every trainer checkpoints)."""
    cfg = _load_config(config, set_, dataset, data_root, name)
    stages = list(cfg.stages)
    if with_llm and "llm" not in stages:
        stages.insert(stages.index("rerank") + 1 if "rerank" in stages else len(stages), "llm")
    root = _run(cfg, stages, lock_wait=wait)
    _print_metrics(root)
    _print_rerank(root)
    _print_llm(root)
    if (root / "report.md").exists():
        console.print(f"report: {root / 'report.md'}, {root / 'report.html'}")


@app.command("serve")
@_reported_command
def serve_cmd(
    run: Annotated[Path, typer.Option("--run", "-r", help="Trained run directory (thinkrec run wrote it).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    window_ms: Annotated[float, typer.Option(help="Micro-batching window: how long a request waits for company.")] = 5.0,
    max_batch: Annotated[int, typer.Option(help="Requests per batched funnel pass.")] = 64,
    max_queue: Annotated[int, typer.Option(help="Waiting requests beyond which new ones get 503 + Retry-After.")] = 128,
    per_source: Annotated[int | None, typer.Option(help="Serving profile: each candidate source's top-N before the merge (default: the run's).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: the run's run.device).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a trained funnel over HTTP: POST /v1/recommend (micro-batched), /v1/recommend/batch, /v1/items,
    /v1/users/{id}/history, /healthz, /readyz, /metrics, OpenAPI docs at /docs and a page at /."""
    try:
        from thinkrec.serve import BatcherConfig, ServeConfig, serve
    except ImportError as e:
        _fail(f"serving needs the serve extra: pip install -e '.[serve]' ({e})")
    if not (run / "config.yaml").exists():
        _fail(f"{run}: not a run directory (no config.yaml); train one with `thinkrec run`")
    from thinkrec.utils.config import check_valid

    batching = BatcherConfig(window_ms=window_ms, max_batch=max_batch, max_queue=max_queue)
    config = check_valid(ServeConfig(batching=batching, per_source=per_source), "serve")
    serve(run, host, port, config, device=device, log_level=log_level, announce=lambda f: console.print(
        f"serving {run} (generation {f.generation or 'unpublished'}) at http://{host}:{port}/ "
        "(API docs at /docs; Ctrl-C to stop)"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
