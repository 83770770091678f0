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
from thinkrec.data.loaders._common import RATING_MAX, _show, decode_error, require_file, restrict_catalogue

_PARQUET = (".parquet", ".pq")


def _separator(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _ragged_line(path: Path, sep: str, width: int | None = None) -> tuple[int, str] | None:
    """Find the first row whose width differs from the header's (polars' own error has no line number), or the
    first line that is not UTF-8 / not readable as CSV."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        try:
            header = next(reader, [])
            width = len(header) if width is None else width
            for row in reader:
                if row and len(row) != width:
                    return reader.line_num, f"expected {width} fields separated by {sep!r}, found {len(row)}"
        except UnicodeDecodeError as exc:
            err = decode_error(path, "utf-8", exc)
            return err.line or 1, f"not valid utf-8 text ({exc.reason})"
        except csv.Error as exc:
            return max(reader.line_num, 1), f"unreadable record ({exc})"
    return None


def _read_parquet(path: Path) -> pl.DataFrame:
    """Read Parquet with pyarrow (which reports corrupt files as errors; polars' reader can panic on them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        # without the file's key/value metadata, which polars' Arrow import panics on when it is not UTF-8
        frame = pl.from_arrow(pa.Table.from_arrays(table.columns, names=table.column_names))
    except (Exception, pl.exceptions.PanicException) as exc:  # arrow / polars raise several error types
        raise DataFormatError(path, f"cannot read Parquet ({str(exc)[:200]})") from None
    assert isinstance(frame, pl.DataFrame)
    return frame


def read_table(path: str | Path, sep: str | None = None, encoding: str = "utf8") -> pl.DataFrame:
    """Read a headed CSV/TSV (all columns as strings, so validation can name bad lines) or a Parquet file."""
    path = require_file(path, "table file")
    if path.suffix.lower() in _PARQUET:
        return _read_parquet(path)
    sep = _separator(path, sep)
    try:
        frame = pl.read_csv(
            path, separator=sep, infer_schema=False, encoding=encoding, truncate_ragged_lines=False
        )
    except Exception as exc:
        bad = _ragged_line(path, sep)
        if bad is not None:
            raise DataFormatError(path, bad[1], bad[0]) from None
        raise DataFormatError(path, f"cannot parse as {sep!r}-separated text ({str(exc)[:200]})") from None
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
    mask = frame.select(ok.fill_null(False)).to_series() if isinstance(ok, pl.Expr) else ok.fill_null(False)
    bad = (~mask).arg_true()  # (no helper column: the file may have a column of any name)
    if bad.len():
        i = int(bad[0])
        line, extra = _line(path, i)
        raise DataFormatError(path, f"expected {what}, got {_show(frame[col][i])}{extra}", line, col)


def _require_columns(path: Path, frame: pl.DataFrame, cols: list[str]) -> None:
    for col in cols:
        if col not in frame.columns:
            raise DataFormatError(path, f"missing column (have {', '.join(frame.columns)})", 1, col)


def _timestamps(path: Path, frame: pl.DataFrame, col: str, ts_format: str | None) -> pl.Series:
    s = frame[col]
    if isinstance(s.dtype, pl.Datetime | pl.Date):
        if isinstance(s.dtype, pl.Datetime) and s.dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        out = s.cast(pl.Datetime("ms")).dt.epoch("s")
        _first_bad(path, frame, out.is_not_null(), col, "a timestamp")
        return out
    if s.dtype.is_numeric():
        return _numeric_timestamps(path, frame, s, col, "a finite timestamp in the 64-bit range")
    if s.dtype not in (pl.Utf8, pl.Categorical) and not isinstance(s.dtype, pl.Enum | pl.Null):
        raise DataFormatError(path, f"expected numbers, dates or date-time text, got a {s.dtype} column", field=col)
    text = s.cast(pl.Utf8).str.strip_chars()
    _first_bad(path, frame, text.is_not_null() & (text != ""), col, "a timestamp")
    if ts_format is None:
        as_num = text.cast(pl.Float64, strict=False)
        if as_num[0] is not None:
            # The first value is a number: the column is numeric, and any non-number is a bad line.
            return _numeric_timestamps(path, frame, text, col, "a finite numeric timestamp")
        try:
            parsed = text.str.to_datetime(strict=False, time_unit="ms")
        except pl.exceptions.PolarsError:
            raise DataFormatError(
                path,
                f"cannot infer a date-time format from {text[0]!r:.60}; pass ts_format",
                *_line(path, 0)[:1],
                col,
            ) from None
    else:
        parsed = text.str.to_datetime(ts_format, strict=False, time_unit="ms")
    _first_bad(path, frame, parsed.is_not_null(), col, "a timestamp")
    if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return parsed.dt.epoch("s")


def _numeric_timestamps(path: Path, frame: pl.DataFrame, s: pl.Series, col: str, what: str) -> pl.Series:
    """Integers kept as they are, other numbers rounded; NaN, infinities and values beyond 64 bits name the line."""
    exact = s.cast(pl.Int64, strict=False) if s.dtype.is_integer() or s.dtype == pl.Utf8 else None
    num = s.cast(pl.Float64, strict=False).round()
    rounded = num.set(~(num.is_finite() & (num >= -(2.0**63)) & (num < 2.0**63)).fill_null(True), None)  # type: ignore[arg-type]
    out = rounded.cast(pl.Int64) if exact is None else exact.fill_null(rounded.cast(pl.Int64))
    _first_bad(path, frame, out.is_not_null(), col, what)
    return out


def _id_column(path: Path, frame: pl.DataFrame, col: str) -> pl.Series:
    """An id column as text: text, categorical and integer columns as they are, floats when finite; other
    types (lists, binary, booleans, dates, ...) are refused; missing or empty ids name the line."""
    s = frame[col]
    if isinstance(s.dtype, pl.Categorical | pl.Enum):
        s = s.cast(pl.Utf8)
    elif s.dtype.is_float():
        _first_bad(path, frame, s.is_finite().fill_null(True), col, "an id")
        s = s.cast(pl.Utf8)
    elif s.dtype.is_numeric():
        s = s.cast(pl.Utf8)
    elif s.dtype != pl.Utf8 and not isinstance(s.dtype, pl.Null):
        raise DataFormatError(path, f"expected text or integer ids, got a {s.dtype} column", field=col)
    s = s.cast(pl.Utf8)
    _first_bad(path, frame, s.is_not_null() & (s.str.strip_chars() != ""), col, "an id")
    return s


def _catalogue_column(path: Path, frame: pl.DataFrame, src: str, target: str, category_sep: str) -> pl.Series:
    """A mapped item-table column in the catalogue's dtype (text, list of text, finite float or null)."""
    s = frame[src]
    if isinstance(s.dtype, pl.Categorical | pl.Enum):
        s = s.cast(pl.Utf8)
    try:
        if target == "categories":
            if isinstance(s.dtype, pl.List):
                return s.cast(pl.List(pl.Utf8)).alias(target)
            return (
                s.cast(pl.Utf8)
                .str.split(category_sep)
                .list.eval(pl.element().str.strip_chars())
                .list.filter(pl.element() != "")
                .alias(target)
            )
        if target == "price":
            if not (s.dtype.is_numeric() or s.dtype in (pl.Utf8, pl.Null)):
                raise pl.exceptions.InvalidOperationError(str(s.dtype))
            price = s.cast(pl.Float64, strict=False)
            return price.set(~price.is_finite().fill_null(True), None).alias(target)  # type: ignore[arg-type]
        if isinstance(s.dtype, pl.List):
            return s.cast(pl.List(pl.Utf8)).list.join(" ").alias(target)
        return s.cast(pl.Utf8).alias(target)
    except pl.exceptions.PolarsError:
        raise DataFormatError(path, f"cannot use a {s.dtype} column as the item {target}", field=src) from None


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
    out = [_id_column(path, frame, item_id_col).alias("item_id")]
    for target, src in mapping.items():
        out.append(_catalogue_column(path, frame, src, target, category_sep))
    used = {item_id_col, *mapping.values()}
    out.extend(frame[c] for c in frame.columns if c not in used and c not in CATALOG_COLUMNS)
    return pl.DataFrame(out)


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
    if frame.height == 0:
        raise DataFormatError(path, "no interactions found (no rows)")
    out = pl.DataFrame(
        [_id_column(path, frame, user_col).alias("user_id"), _id_column(path, frame, item_col).alias("item_id")]
    )
    if ts_col:
        out = out.with_columns(_timestamps(path, frame, ts_col, ts_format).alias("ts"))
    if rating_col:
        r = frame[rating_col]
        if not (r.dtype.is_numeric() or r.dtype in (pl.Utf8, pl.Null)):
            raise DataFormatError(path, f"expected numbers, got a {r.dtype} column", field=rating_col)
        rating = r.cast(pl.Float64, strict=False)
        ok = (rating.is_finite() & (rating.abs() <= RATING_MAX)) | (rating.is_null() & r.is_null())
        _first_bad(path, frame, ok, rating_col, "a finite number (float32)")
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
