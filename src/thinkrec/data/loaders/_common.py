"""Helpers shared by the loaders: file checks, line-numbered parsing and catalogue shaping."""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import math
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import polars as pl

from thinkrec.data.dataset import DataFormatError

_YEAR_RE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RATING_MAX = 3.4e38  # ratings are stored as float32


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


def decode_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> DataFormatError:
    """The error for a file that does not decode, naming the line of the first bad byte (text streams decode
    in blocks, so the line being read when decoding failed is not that line)."""
    line = None
    with contextlib.suppress(Exception):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        try:
            data.decode(encoding)
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
    return DataFormatError(path, f"not valid {encoding} text ({exc.reason})", line)


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
            raise decode_error(path, encoding, exc) from None
        except (OSError, EOFError, zlib.error) as exc:  # truncated / corrupt gzip
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
    """A 64-bit integer (timestamps, impression ids)."""
    tok = token.strip()
    try:
        value = int(tok)
    except ValueError:  # also Python's limit on the digits of an int
        raise DataFormatError(path, f"expected an integer, got {_show(token)}", lineno, field) from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise DataFormatError(path, f"integer out of the 64-bit range, got {_show(token)}", lineno, field)
    return value


def parse_float(path: Path, token: str, lineno: int | None, field: str) -> float | None:
    """A finite number, or None for an empty field (NaN and infinities are errors)."""
    tok = token.strip()
    if not tok:
        return None
    try:
        value = float(tok)
    except ValueError:
        raise DataFormatError(path, f"expected a number, got {_show(token)}", lineno, field) from None
    if not math.isfinite(value):
        raise DataFormatError(path, f"expected a finite number, got {_show(token)}", lineno, field)
    return value


def check_rating(path: Path, value: float | None, lineno: int | None, field: str) -> float | None:
    """A parsed rating that fits the dataset's float32 ratings (None passes)."""
    if value is not None and abs(value) > RATING_MAX:
        raise DataFormatError(path, f"rating out of range, got {value!r}", lineno, field)
    return value


def check_int_id(path: Path, token: str, lineno: int | None, field: str) -> str:
    """Validate a non-negative integer id (ASCII digits only, any length) and return it without leading zeros."""
    tok = token.strip()
    if not (tok.isascii() and tok.isdigit()):
        raise DataFormatError(path, f"expected an integer id, got {_show(token)}", lineno, field)
    return tok.lstrip("0") or "0"


def _show(token: object, limit: int = 60) -> str:
    """``repr`` of a bad value for an error message, cut to ``limit`` characters."""
    text = repr(token)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A whole text file; a decoding error names the line."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise decode_error(path, encoding, exc) from None


def parse_json(path: Path, text: str, lineno: int | None = None) -> object:
    """``json.loads`` whose failures (syntax, nesting too deep, integers too long) are :class:`DataFormatError`;
    ``lineno`` is the line of a one-record-per-line file (else the decoder's line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = lineno if lineno is not None else exc.lineno
        raise DataFormatError(path, f"invalid JSON ({exc.msg})", line) from None
    except RecursionError:
        raise DataFormatError(path, "invalid JSON (nested too deeply)", lineno) from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise DataFormatError(path, f"invalid JSON ({exc})", lineno) from None


def finite_float(path: Path, value: object, lineno: int | None, field: str) -> float | None:
    """A JSON / Python value as a finite float (None for null or ""); anything else names the field."""
    if value is None or value == "":
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise DataFormatError(path, f"expected a number, got {_show(value)}", lineno, field) from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise DataFormatError(path, f"expected a finite number, got {_show(value)}", lineno, field)
    return out


def as_text(value: object) -> str:
    """A free-text field from JSON / Python values: None -> "", a list -> its parts joined by spaces, else str."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(v).strip() for v in value if v is not None and str(v).strip())
    return value if isinstance(value, str) else str(value)


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
        with contextlib.suppress(ValueError):
            parsed = python_literal(text if text[0] == "[" else f"[{text}]")
            if isinstance(parsed, list | tuple):
                return split_categories(list(parsed), sep)
    return [c.strip() for c in text.split(sep) if c.strip()]


def python_literal(text: str) -> object:
    """``ast.literal_eval`` (never ``eval``) whose every failure is a ValueError: syntax, unhashable keys
    (TypeError), nesting too deep (RecursionError / MemoryError); its SyntaxWarnings are silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a Python literal ({type(exc).__name__})") from None


def restrict_catalogue(items: pl.DataFrame, used: pl.Series, keep_all: bool) -> pl.DataFrame:
    """Drop catalogue rows no interaction/impression mentions (unless ``keep_all``), keeping catalogue order."""
    if keep_all:
        return items
    return items.filter(pl.col("item_id").is_in(used.cast(pl.Utf8).unique().implode()))


def sort_by_int_id(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    """Stable sort by the integer value of a column of non-negative integer ids (as strings, any length: compared
    by digit count, then digits, so ids beyond 64 bits sort right too)."""
    key = pl.col(col).cast(pl.Utf8).str.strip_chars().str.strip_chars_start("0")
    return (
        frame.with_columns(key.str.len_bytes().alias("_n"), key.alias("_k"))
        .sort(["_n", "_k"], maintain_order=True)
        .drop("_n", "_k")
    )
