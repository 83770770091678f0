"""Fixed-seed fuzzing campaign: every data loader, the serving API's request bodies and ``--set`` strings.

    python benchmarks/fuzz.py [--targets s3rec,lcrec,...] [--cases 10000] [--seed 0] [--run RUN_DIR]
    python benchmarks/fuzz.py --replay recbole:1234      # one case again, with its traceback

Each case is built by the library's case runners (:mod:`thinkrec.testing.fuzz`) from its own
``random.Random(f"{seed}/{target}/{case}")``, so any case replays alone: a valid input generated at random, 0-3
random mutations (truncation, bad bytes and encodings, wrong types, NaN / inf, negative or huge ids, duplicate
rows, empty files, missing or swapped columns, deep nesting; for the API also unknown keys, nested junk, non-JSON
bytes and wrong content types), then the target:

* loaders (``s3rec``, ``lcrec``, ``recbole``, ``movielens``, ``mind``, ``csv``, ``parquet``, ``amazon``): the files go
  through :func:`thinkrec.data.load_dataset`; *loaded* = a dataset that passes ``Dataset.validate()``, *rejected* =
  a ``DataFormatError`` naming a file of the case;
* ``api``: POSTs to ``/v1/recommend`` and ``/v1/recommend/batch`` of a tiny trained funnel (synthetic data, trained
  here once unless ``--run`` names a run directory), in process; *loaded* = 200, *rejected* = 4xx naming the field;
* ``set``: 1-3 random ``key=value`` overrides through ``load_run_config`` + ``check_run_config``; *rejected* =
  ``ConfigError``.

Anything else is *unexpected* (another exception, a 5xx, a broken invariant, a case over ``--case-timeout``); the
first few of each kind are summarised with their traceback. Rows: ``benchmarks/results/fuzz.json``, dataset
``fuzz``, model = the target, metrics ``cases``, ``unexpected``, ``loaded``, ``rejected``.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row, save_rows  # noqa: E402
from thinkrec.testing.fuzz import (  # noqa: E402
    LOADER_TARGETS,
    TARGETS,
    ApiFuzzer,
    config_keys,
    run_loader_case,
    run_set_case,
)

ROOT = Path(__file__).resolve().parents[1]
# A funnel small enough to train in seconds on a CPU: the serving tests' settings (synthetic shop, merged candidates,
# TIGER + S²GR + SASRec + co-occurrence, DNN and EGLR re-rankers).
TINY_FUNNEL = [
    "data.options.n_users=150", "data.options.n_items=80", "data.options.n_impressions=50", "sasrec.epochs=2",
    "sasrec.d_model=16", "sasrec.n_layers=1", "sasrec.max_len=20", "eval.bootstrap=50", "retrieval.model.d_model=16",
    "retrieval.model.n_heads=2", "retrieval.model.ffn=32", "retrieval.model.n_enc_layers=1",
    "retrieval.model.n_dec_layers=1", "retrieval.model.max_len=20", "retrieval.model.n_clusters=4",
    "retrieval.train.epochs=2", "retrieval.train.valid_users=40", "rerank.model.d_model=16", "rerank.model.max_decode=8",
    "rerank.train.epochs=1", "rerank.train.evaluator_epochs=1", "rerank.train.rl_epochs=1", "rerank.train.rollouts=2",
    "rerank.source=funnel", "rerank.models=[initial,dnn,eglr]", "retrieval.rescore_weight=null",
]


class CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout("case ran over --case-timeout")


def _tiny_funnel(out: Path, log: Any) -> Any:
    import yaml

    import thinkrec

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY_FUNNEL)}
    overrides |= {"run.out_dir": str(out), "run.name": "fuzz"}
    t = time.perf_counter()
    root = thinkrec.run(str(ROOT / "configs" / "synthetic.yaml"), log=lambda m: None, **overrides)
    log(f"api: trained a tiny funnel in {time.perf_counter() - t:.1f} s ({root})")
    return thinkrec.load(root)


class Campaign:
    """Runs the cases of one target and tallies them."""

    def __init__(self, target: str, seed: int, workdir: Path, run: str | None, log: Any):
        self.target, self.seed, self.workdir, self.log = target, seed, workdir, log
        self.api: ApiFuzzer | None = None
        self.keys: dict[str, Any] | None = None
        self.setup_s = 0.0
        t = time.perf_counter()
        if target == "api":
            import thinkrec

            funnel = thinkrec.load(run) if run else _tiny_funnel(workdir / "funnel", log)
            self.api = ApiFuzzer(funnel).__enter__()
        elif target == "set":
            self.keys = config_keys()
        self.setup_s = time.perf_counter() - t

    def close(self) -> None:
        if self.api is not None:
            self.api.__exit__(None, None, None)

    def case(self, i: int) -> Any:
        rng = random.Random(f"{self.seed}/{self.target}/{i}")
        if self.target in LOADER_TARGETS:
            return run_loader_case(self.target, rng, self.workdir / "case")
        if self.target == "api":
            assert self.api is not None
            return self.api.case(rng)
        return run_set_case(rng, self.keys)


def _signature(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    inner = next((f for f in reversed(tb) if "/thinkrec/" in f.filename and "/testing/fuzz.py" not in f.filename),
                 tb[-1] if tb else None)
    where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
    return f"{type(exc).__name__} at {where}"


def run_target(target: str, cases: int, seed: int, run: str | None, show: int, timeout: float, log: Any
               ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        camp = Campaign(target, seed, Path(tmp), run, log)
        counts: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        examples: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()
        try:
            for i in range(cases):
                if timeout:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    out = camp.case(i)
                    counts["loaded" if out.status in ("loaded", "ok") else "rejected"] += 1
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - polars' PanicException is a BaseException
                    counts["unexpected"] += 1
                    sig = _signature(exc)
                    kinds[sig] += 1
                    if sig not in examples and len(examples) < show:
                        examples[sig] = {
                            "case": i, "replay": f"python benchmarks/fuzz.py --seed {seed} --replay {target}:{i}",
                            "error": "".join(traceback.format_exception_only(exc)).strip()[:600],
                            "traceback": [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                          for f in traceback.extract_tb(exc.__traceback__)[-8:]],
                        }
                finally:
                    if timeout:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                if (i + 1) % 2000 == 0:
                    log(f"  {target}: {i + 1}/{cases} cases, {counts['unexpected']} unexpected")
        finally:
            camp.close()
        wall = time.perf_counter() - t0
    for sig, ex in examples.items():
        ex["count"] = kinds[sig]
    metrics = {"cases": cases, "unexpected": counts["unexpected"], "loaded": counts["loaded"],
               "rejected": counts["rejected"]}
    log(f"{target}: {metrics} in {wall:.1f} s" + (f" (+{camp.setup_s:.1f} s setup)" if camp.setup_s > 0.5 else ""))
    for sig, ex in examples.items():
        log(f"    {ex['count']} x {sig}: {ex['error'][:300]}\n      replay: {ex['replay']}")
    return row("fuzz", "fuzz", target, metrics, wall, seed=seed, setup_s=round(camp.setup_s, 2),
               ms_per_case=round(1000 * wall / max(cases, 1), 2), unexpected_kinds=dict(kinds),
               unexpected_examples=list(examples.values()))


def replay(spec: str, seed: int, run: str | None) -> None:
    target, _, i = spec.partition(":")
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        camp = Campaign(target, seed, Path(tmp), run, print)
        try:
            out = camp.case(int(i))
            print(f"{target}:{i}: {out.status} {out.mutations} {out.detail}")
        finally:
            camp.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}")
    ap.add_argument("--cases", type=int, default=10_000, help="cases per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default=None, help="trained run directory for the api target (default: train a tiny one)")
    ap.add_argument("--show", type=int, default=5, help="unexpected kinds summarised per target")
    ap.add_argument("--case-timeout", type=float, default=60.0, help="seconds before a case counts as unexpected")
    ap.add_argument("--replay", default=None, help="TARGET:CASE: run one case and show its outcome or traceback")
    ap.add_argument("--no-save", action="store_true", help="print only, do not write results/fuzz.json")
    args = ap.parse_args()
    if args.replay:
        replay(args.replay, args.seed, args.run)
        return
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    signal.signal(signal.SIGALRM, _alarm)
    rows = []
    for target in targets:
        rows.append(run_target(target, args.cases, args.seed, args.run, args.show, args.case_timeout,
                               lambda m: print(m, flush=True)))
        if not args.no_save:
            path = save_rows("fuzz", rows)
    total = sum(r["metrics"]["unexpected"] for r in rows)
    print(f"{sum(r['metrics']['cases'] for r in rows)} cases, {total} unexpected"
          + ("" if args.no_save else f"; wrote {path}"))
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
