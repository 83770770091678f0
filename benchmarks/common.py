"""Helpers shared by the benchmark scripts: result rows, atomic writes, peak RSS, machine info."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

from thinkrec.utils.io import read_json, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def row(benchmark: str, dataset: str, model: str, metrics: dict[str, Any], wall_s: float, **extra: Any) -> dict[str, Any]:
    return {"benchmark": benchmark, "dataset": dataset, "model": model, "metrics": metrics, "wall_s": round(wall_s, 2),
            "command": command_line(), "machine": machine(), **extra}


def save_rows(benchmark: str, rows: list[dict[str, Any]], key: str = "model") -> Path:
    """Write ``results/<benchmark>.json``; rows measured again (same dataset and ``key``) replace the old ones."""
    path = RESULTS / f"{benchmark}.json"
    old = read_json(path) if path.exists() else []
    new_keys = {(r["dataset"], r.get(key)) for r in rows}
    old = [r for r in old if (r["dataset"], r.get(key)) not in new_keys]
    write_json(path, old + rows)
    return path
