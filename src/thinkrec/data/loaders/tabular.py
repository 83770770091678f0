"""Generic CSV/TSV/Parquet interactions with a caller-given column mapping, plus an optional item table.

Example::

    load_table("events.csv", user_col="uid", item_col="sku", ts_col="time", rating_col="stars",
               items_path="products.parquet", item_columns={"title": "name", "categories": "tags"})

Timestamps may be integers (kept as is), numbers (rounded) or date-time strings (converted to epoch seconds, UTC;
``ts_format`` gives an explicit ``strftime`` format). Without ``ts_col`` the file order is the time order.
Item ids are numbered in item-table order when one is given (rows without interactions dropped unless
``keep_all_items``), otherwise by first appearance. Errors in CSV input name the line (header = line 1).
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl

from thinkrec.data.dataset import CATALOG_COLUMNS, DataFormatError, Dataset
from thinkrec.data.loaders._common import require_file, restrict_catalogue

_PARQUET = (".parquet", ".pq")


def _separator(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _ragged_line(path: Path, sep: str, width: int) -> tuple[int, str] | None:
    """Find the first row whose width differs from the header's (polars' own error has no line number)."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        next(reader, None)
        for row in reader:
            if row and len(row) != width:
                return reader.line_num, f"expected {width} fields separated by {sep!r}, found {len(row)}"
    return None


def read_table(path: str | Path, sep: str | None = None, encoding: str = "utf8") -> pl.DataFrame:
    """Read a headed CSV/TSV (all columns as strings, so validation can name bad lines) or a Parquet file."""
    path = require_file(path, "table file")
    if path.suffix.lower() in _PARQUET:
        try:
            return pl.read_parquet(path)
        except Exception as exc:  # polars/arrow raise several error types for corrupt files
            raise DataFormatError(path, f"cannot read Parquet ({exc})") from None
    sep = _separator(path, sep)
    try:
        frame = pl.read_csv(
            path, separator=sep, infer_schema=False, encoding=encoding, truncate_ragged_lines=False
        )
    except Exception as exc:
        with path.open(encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
        bad = _ragged_line(path, sep, len(header))
        if bad is not None:
            raise DataFormatError(path, bad[1], bad[0]) from None
        raise DataFormatError(path, f"cannot parse as {sep!r}-separated text ({exc})") from None
    if frame.height:
        # polars pads short rows with nulls instead of failing; a short row is a malformed line.
        bad = _ragged_line(path, sep, frame.width)
        if bad is not None:
            raise DataFormatError(path, bad[1], bad[0])
    return frame


def _line(path: Path, row: int) -> tuple[int | None, str]:
    """CSV rows are reported as file lines (header is line 1); Parquet rows as row numbers in the message."""
    if path.suffix.lower() in _PARQUET:
        return None, f" (row {row})"
    return row + 2, ""


def _first_bad(path: Path, frame: pl.DataFrame, ok: pl.Expr | pl.Series, col: str, what: str) -> None:
    """Raise for the first row where ``ok`` is false, naming its line and the column."""
    bad = frame.with_row_index("_i").filter(~ok)
    if bad.height:
        line, extra = _line(path, int(bad["_i"][0]))
        raise DataFormatError(path, f"expected {what}, got {bad[col][0]!r}{extra}", line, col)


def _require_columns(path: Path, frame: pl.DataFrame, cols: list[str]) -> None:
    for col in cols:
        if col not in frame.columns:
            raise DataFormatError(path, f"missing column (have {', '.join(frame.columns)})", 1, col)


def _timestamps(path: Path, frame: pl.DataFrame, col: str, ts_format: str | None) -> pl.Series:
    s = frame[col]
    if s.dtype.is_temporal():
        if isinstance(s.dtype, pl.Datetime) and s.dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return s.cast(pl.Datetime("ms")).dt.epoch("s")
    if s.dtype.is_numeric():
        return s.cast(pl.Float64).round().cast(pl.Int64)
    text = s.cast(pl.Utf8).str.strip_chars()
    _first_bad(path, frame, text.is_not_null() & (text != ""), col, "a timestamp")
    if ts_format is None:
        as_num = text.cast(pl.Float64, strict=False)
        if as_num[0] is not None:
            # The first value is a number: the column is numeric, and any non-number is a bad line.
            _first_bad(path, frame, as_num.is_not_null(), col, "a numeric timestamp")
            return as_num.round().cast(pl.Int64)
        try:
            parsed = text.str.to_datetime(strict=False, time_unit="ms")
        except pl.exceptions.ComputeError:
            raise DataFormatError(
                path,
                f"cannot infer a date-time format from {text[0]!r}; pass ts_format",
                *_line(path, 0)[:1],
                col,
            ) from None
    else:
        parsed = text.str.to_datetime(ts_format, strict=False, time_unit="ms")
    _first_bad(path, frame, parsed.is_not_null(), col, "a timestamp")
    if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return parsed.dt.epoch("s")


def read_item_table(
    path: str | Path,
    item_id_col: str,
    item_columns: dict[str, str] | None = None,
    sep: str | None = None,
    category_sep: str = "|",
) -> pl.DataFrame:
    """Read an item table; ``item_columns`` maps catalogue names (title, brand, categories, description, price)
    to source columns. Unmapped source columns are kept as extra columns."""
    path = Path(path)
    frame = read_table(path, sep)
    mapping = dict(item_columns or {})
    unknown = set(mapping) - (set(CATALOG_COLUMNS) - {"item", "item_id"})
    if unknown:
        raise ValueError(f"item_columns keys must be catalogue columns, got {sorted(unknown)}")
    _require_columns(path, frame, [item_id_col, *mapping.values()])
    _first_bad(path, frame, pl.col(item_id_col).is_not_null(), item_id_col, "an item id")
    out = [pl.col(item_id_col).cast(pl.Utf8).alias("item_id")]
    for target, src in mapping.items():
        col = pl.col(src)
        if target == "categories" and frame.schema[src] == pl.Utf8:
            col = (
                col.str.split(category_sep)
                .list.eval(pl.element().str.strip_chars())
                .list.filter(pl.element() != "")
            )
        elif target == "price":
            col = col.cast(pl.Float64, strict=False)
        out.append(col.alias(target))
    used = {item_id_col, *mapping.values()}
    out.extend(pl.col(c) for c in frame.columns if c not in used and c not in CATALOG_COLUMNS)
    return frame.select(out)


def load_table(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    ts_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
    items_path: str | Path | None = None,
    item_id_col: str | None = None,
    item_columns: dict[str, str] | None = None,
    items_sep: str | None = None,
    category_sep: str = "|",
    ts_format: str | None = None,
    name: str | None = None,
    keep_all_items: bool = False,
) -> Dataset:
    """Load interactions from a CSV/TSV/Parquet file with named columns (see the module docstring)."""
    path = require_file(path, "interactions table")
    frame = read_table(path, sep)
    needed = [user_col, item_col] + [c for c in (ts_col, rating_col) if c]
    _require_columns(path, frame, needed)
    for col in (user_col, item_col):
        _first_bad(path, frame, pl.col(col).is_not_null() & (pl.col(col).cast(pl.Utf8) != ""), col, "an id")
    out = frame.select(
        pl.col(user_col).cast(pl.Utf8).alias("user_id"), pl.col(item_col).cast(pl.Utf8).alias("item_id")
    )
    if ts_col:
        out = out.with_columns(_timestamps(path, frame, ts_col, ts_format).alias("ts"))
    if rating_col:
        rating = frame[rating_col].cast(pl.Float64, strict=False)
        _first_bad(path, frame, ~(rating.is_null() & frame[rating_col].is_not_null()), rating_col, "a number")
        out = out.with_columns(rating.alias("rating"))
    items = None
    if items_path is not None:
        items = read_item_table(items_path, item_id_col or item_col, item_columns, items_sep, category_sep)
        items = restrict_catalogue(items, out["item_id"], keep_all_items)
    return Dataset.from_frames(
        name or path.stem,
        out,
        items,
        meta={"source": str(path), "format": "parquet" if path.suffix.lower() in _PARQUET else "csv"},
    )
