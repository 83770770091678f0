"""Helpers shared by the loaders: file checks, line-numbered parsing and catalogue shaping."""

from __future__ import annotations

import ast
import contextlib
import gzip
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import polars as pl

from thinkrec.data.dataset import DataFormatError

_YEAR_RE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


def require_file(path: str | Path, what: str = "data file", hint: str | None = None) -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError saying what was expected there."""
    path = Path(path)
    if not path.exists():
        msg = f"{path}: {what} not found"
        if hint:
            msg += f" ({hint})"
        raise FileNotFoundError(msg)
    return path


def file_or_single(
    path: str | Path, what: str, pattern: str, label: str | None = None, skip: tuple[str, ...] = ()
) -> Path:
    """``path`` when it is a file; for a folder, the one file in it matching ``pattern`` (names in ``skip``,
    compared lower-cased, do not count). ``label`` is how the error names the expected file (default: the pattern).
    """
    path = require_file(path, what)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.glob(pattern) if p.name.lower() not in skip)
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: expected exactly one {label or repr(pattern)} file in the folder, found {len(found)}"
        )
    return found[0]


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a text file, transparently decompressing ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    return path.open(encoding=encoding, newline="")


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line without end-of-line)`` for non-blank lines; decoding errors name the line."""
    lineno = 0
    with open_text(path, encoding) as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - lineno is used after the loop on errors
                line = raw.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, f"not valid {encoding} text ({exc.reason})", lineno + 1) from None
        except (OSError, EOFError) as exc:  # truncated / corrupt gzip
            raise DataFormatError(path, f"cannot read file ({exc})", lineno + 1) from None


def iter_fields(
    path: Path,
    sep: str,
    fields: Sequence[str],
    encoding: str = "utf-8",
    min_fields: int | None = None,
    skip: int = 0,
) -> Iterator[tuple[int, list[str]]]:
    """Split each line on ``sep`` and check the column count (exact, or at least ``min_fields``).

    ``fields`` names the columns so an error can say which one is missing. ``skip`` drops header lines.
    """
    need = len(fields) if min_fields is None else min_fields
    for lineno, line in iter_lines(path, encoding):
        if lineno <= skip:
            continue
        parts = line.split(sep)
        n = len(parts)
        if n < need:
            raise DataFormatError(
                path, f"expected {len(fields)} fields separated by {sep!r}, found {n}", lineno, fields[n]
            )
        if min_fields is None and n > need:
            raise DataFormatError(
                path,
                f"expected {len(fields)} fields separated by {sep!r}, found {n}",
                lineno,
                f"column {need + 1}",
            )
        yield lineno, parts


def parse_int(path: Path, token: str, lineno: int | None, field: str) -> int:
    tok = token.strip()
    try:
        return int(tok)
    except ValueError:
        raise DataFormatError(path, f"expected an integer, got {token!r}", lineno, field) from None


def parse_float(path: Path, token: str, lineno: int | None, field: str) -> float | None:
    tok = token.strip()
    if not tok:
        return None
    try:
        return float(tok)
    except ValueError:
        raise DataFormatError(path, f"expected a number, got {token!r}", lineno, field) from None


def check_int_id(path: Path, token: str, lineno: int | None, field: str) -> str:
    """Validate a non-negative integer id (ASCII digits only) and return it normalised as a string."""
    tok = token.strip()
    if not (tok.isascii() and tok.isdigit()):
        raise DataFormatError(path, f"expected an integer id, got {token!r}", lineno, field)
    return str(int(tok))


def year_from_title(title: str | None) -> int | None:
    """``"Toy Story (1995)"`` -> 1995 (MovieLens titles end with the release year)."""
    if not title:
        return None
    m = _YEAR_RE.search(title)
    return int(m.group(1)) if m else None


def split_categories(value: object, sep: str = "|") -> list[str]:
    """Normalise a category field: a list, a Python-literal list (``"'A', 'B'"``) or a ``sep``-joined string."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        out: list[str] = []
        for v in value:
            out.extend(split_categories(v, sep) if isinstance(v, list | tuple) else [str(v).strip()])
        return [c for c in out if c]
    text = str(value).strip()
    if not text:
        return []
    if text[0] in "'\"[":
        # Quoted lists such as PLRec's "'Beauty', 'Makeup'" or a stringified Python list.
        with contextlib.suppress(ValueError, SyntaxError):
            parsed = ast.literal_eval(text if text[0] == "[" else f"[{text}]")
            if isinstance(parsed, list | tuple):
                return split_categories(list(parsed), sep)
    return [c.strip() for c in text.split(sep) if c.strip()]


def restrict_catalogue(items: pl.DataFrame, used: pl.Series, keep_all: bool) -> pl.DataFrame:
    """Drop catalogue rows no interaction/impression mentions (unless ``keep_all``), keeping catalogue order."""
    if keep_all:
        return items
    return items.filter(pl.col("item_id").is_in(used.cast(pl.Utf8).unique().implode()))


def sort_by_int_id(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    """Stable sort by the integer value of a string id column, so dense ids follow the source's numbering."""
    return (
        frame.with_columns(pl.col(col).cast(pl.Int64).alias("_k")).sort("_k", maintain_order=True).drop("_k")
    )
