"""RecBole atomic files: ``X.inter`` and optional ``X.item`` (tab-separated, header ``name:type``).

Types: ``token`` (string), ``token_seq`` (space-separated strings -> list), ``float``, ``float_seq``.
The ``.inter`` fields map to user/item/timestamp/rating by name (configurable); the ``.item`` file feeds the
catalogue: the title, category, description, brand and price fields are found among common names
(``title``/``movie_title``/``name``…, ``categories``/``class``/``genre``…) unless named explicitly, and every
other item field is kept as an extra column (``token_seq`` fields as lists).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset
from thinkrec.data.loaders._common import (
    INT64_MAX,
    INT64_MIN,
    RATING_MAX,
    check_int_id,
    decode_error,
    open_text,
    parse_float,
    require_file,
    restrict_catalogue,
    split_categories,
)

RECBOLE_TYPES: dict[str, pl.DataType] = {
    "token": pl.Utf8,
    "token_seq": pl.List(pl.Utf8),
    "float": pl.Float64,
    "float_seq": pl.List(pl.Float64),
}
TITLE_FIELDS = ("title", "movie_title", "name", "item_name", "business_name")
CATEGORY_FIELDS = ("categories", "category", "class", "genre", "genres")
DESCRIPTION_FIELDS = ("description", "abstract", "desc")
BRAND_FIELDS = ("brand",)
PRICE_FIELDS = ("price",)


def _records(path: Path, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated records with their first line number.

    RecBole reads atomic files with pandas, so a field may be double-quoted and contain tabs or newlines
    (PLRec's ``item_description.csv`` has such titles); the csv module reproduces that.
    """
    start = 1
    with open_text(path, encoding) as fh:
        reader = csv.reader(fh, delimiter="\t", quotechar='"')
        try:
            for row in reader:
                if row and any(f.strip() for f in row):
                    yield start, row
                start = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise decode_error(path, encoding, exc) from None
        except csv.Error as exc:
            raise DataFormatError(path, f"unreadable record ({exc})", start) from None


def read_atomic(
    path: str | Path, encoding: str = "utf-8", required: Sequence[str] = ()
) -> tuple[pl.DataFrame, dict[str, str]]:
    """Read one atomic file into a frame (column names without ``:type``) and the ``{name: type}`` map."""
    frame, types, _ = _read_atomic(Path(path), encoding, required)
    return frame, types


def _read_atomic(
    path: Path, encoding: str, required: Sequence[str]
) -> tuple[pl.DataFrame, dict[str, str], list[int]]:
    """:func:`read_atomic` plus each row's first line number in the file (for errors found later)."""
    path = require_file(path, "RecBole atomic file")
    lines = _records(path, encoding)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataFormatError(path, "empty file; expected a 'name:type' header", 1) from None
    names: list[str] = []
    types: list[str] = []
    for col in header:
        name, sep, typ = col.strip().partition(":")
        if not sep or not name or typ not in RECBOLE_TYPES:
            raise DataFormatError(
                path,
                f"header fields must be 'name:type' with type in {sorted(RECBOLE_TYPES)}, got {col!r}",
                1,
                col,
            )
        if name in names:
            raise DataFormatError(path, "header field named twice", 1, name)
        names.append(name)
        types.append(typ)
    for req in required:
        if req not in names:
            raise DataFormatError(path, f"missing required header field (have {', '.join(names)})", 1, req)
    columns: list[list[Any]] = [[] for _ in names]
    n = len(names)
    line_numbers: list[int] = []
    for lineno, parts in lines:
        line_numbers.append(lineno)
        if len(parts) != n:
            field = names[len(parts)] if len(parts) < n else f"column {n + 1}"
            raise DataFormatError(
                path, f"expected {n} tab-separated fields, found {len(parts)}", lineno, field
            )
        for j, (tok, typ) in enumerate(zip(parts, types, strict=True)):
            if typ == "token":
                columns[j].append(tok)
            elif typ == "token_seq":
                columns[j].append(tok.split())
            elif typ == "float":
                columns[j].append(parse_float(path, tok, lineno, names[j]))
            else:
                columns[j].append([parse_float(path, t, lineno, names[j]) for t in tok.split()])
    frame = pl.DataFrame(
        {name: col for name, col in zip(names, columns, strict=True)},
        schema={name: RECBOLE_TYPES[typ] for name, typ in zip(names, types, strict=True)},
    )
    return frame, dict(zip(names, types, strict=True)), line_numbers


def _pick(
    fields: dict[str, str], explicit: str | None, candidates: Sequence[str], path: Path, role: str
) -> str | None:
    if explicit is not None:
        if explicit not in fields:
            raise DataFormatError(path, f"{role} field not in header (have {', '.join(fields)})", 1, explicit)
        return explicit
    return next((c for c in candidates if c in fields), None)


def read_recbole_items(
    path: str | Path,
    item_field: str = "item_id",
    title_field: str | None = None,
    category_field: str | None = None,
    description_field: str | None = None,
    brand_field: str | None = None,
    price_field: str | None = None,
    encoding: str = "utf-8",
) -> pl.DataFrame:
    """Read a ``.item`` file into catalogue columns (standard names) plus the remaining fields."""
    path = Path(path)
    frame, types = read_atomic(path, encoding, required=[item_field])
    roles = {
        "title": _pick(types, title_field, TITLE_FIELDS, path, "title"),
        "categories": _pick(types, category_field, CATEGORY_FIELDS, path, "category"),
        "description": _pick(types, description_field, DESCRIPTION_FIELDS, path, "description"),
        "brand": _pick(types, brand_field, BRAND_FIELDS, path, "brand"),
        "price": _pick(types, price_field, PRICE_FIELDS, path, "price"),
    }
    out: dict[str, pl.Series] = {"item_id": frame[item_field].cast(pl.Utf8)}
    for role, src in roles.items():
        if src is None:
            continue
        col = frame[src]
        if types[src] in ("float", "float_seq"):
            col = col.cast(pl.List(pl.Utf8) if types[src] == "float_seq" else pl.Utf8)
        if role == "categories":
            # token_seq splits on spaces; PLRec-style "'A', 'B C'" lists must be re-joined and parsed instead.
            vals = [
                split_categories(" ".join(v))
                if v and v[0][0] in "'\"["
                else (v if isinstance(v, list) else split_categories(v))
                for v in col.to_list()
            ]
            out[role] = pl.Series(role, vals, dtype=pl.List(pl.Utf8))
        elif role == "price":
            first = col.list.first() if types[src].endswith("_seq") else col
            price = first.cast(pl.Utf8).cast(pl.Float64, strict=False)
            out[role] = price.set(~price.is_finite().fill_null(True), None)  # type: ignore[arg-type]
        elif col.dtype == pl.List(pl.Utf8):
            out[role] = col.list.join(" ")
        else:
            out[role] = col.cast(pl.Utf8)
    used = {item_field, *(v for v in roles.values() if v)}
    for name in frame.columns:
        if name not in used and name not in out and name != "item":
            out[name] = frame[name]
    return pl.DataFrame(out)


def load_recbole(
    path: str | Path,
    item_path: str | Path | None = None,
    name: str | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    rating_field: str = "rating",
    title_field: str | None = None,
    category_field: str | None = None,
    description_field: str | None = None,
    keep_all_items: bool = False,
    encoding: str = "utf-8",
    int_ids: bool = False,
) -> Dataset:
    """Load ``X.inter`` (+ ``X.item``). ``path`` may be the ``.inter`` file or a folder ``X/`` holding ``X.inter``.

    The ``.item`` file next to the ``.inter`` (same stem) is used unless ``item_path`` is given. Items are numbered in
    ``.item`` order; catalogue rows without interactions are dropped unless ``keep_all_items``.
    Without a time field the file order is the time order. ``int_ids``: user and item ids must be non-negative
    integers (MovieLens' RecBole layout), normalised without leading zeros.
    """
    path = require_file(path, "RecBole .inter file or folder")
    if path.is_dir():
        cand = path / f"{path.name}.inter"
        found = [cand] if cand.exists() else sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{path}: expected '{path.name}.inter' or exactly one '*.inter' file, found {len(found)}"
            )
        path = found[0]
    inter, types, lines = _read_atomic(path, encoding, required=[user_field, item_field])
    if inter.height == 0:
        raise DataFormatError(path, "no interactions found (only a header)")
    cols = {user_field: "user_id", item_field: "item_id"}
    for field, target in ((time_field, "ts"), (rating_field, "rating")):
        if field in types:
            if types[field] not in ("float", "token"):
                raise DataFormatError(path, f"expected a float or token field, got {types[field]}", 1, field)
            cols[field] = target
    for field in (user_field, item_field):
        if types[field] not in ("float", "token"):
            raise DataFormatError(path, f"expected a token (or float) id field, got {types[field]}", 1, field)
    frame = inter.select([pl.col(src).alias(dst) for src, dst in cols.items()])
    for field, col in ((user_field, "user_id"), (item_field, "item_id")):
        ids = frame[col].cast(pl.Utf8)
        bad = (ids.str.strip_chars().fill_null("") == "").arg_true()
        if bad.len():
            raise DataFormatError(path, "empty id", lines[bad[0]], field)
        if int_ids:
            checked = [check_int_id(path, tok, line, field) for tok, line in zip(ids.to_list(), lines, strict=True)]
            ids = pl.Series(col, checked, dtype=pl.Utf8)
        frame = frame.with_columns(ids.alias(col))
    if "ts" in frame.columns:
        ts = frame["ts"].cast(pl.Float64, strict=False)
        ok = ts.is_finite().fill_null(False) & (ts.round() >= INT64_MIN) & (ts.round() < INT64_MAX)
        bad = (~ok).arg_true()
        if bad.len():
            raise DataFormatError(
                path, f"expected a finite numeric timestamp, got {frame['ts'][bad[0]]!r:.60}", lines[bad[0]],
                time_field,
            )
        frame = frame.with_columns(ts.round().cast(pl.Int64).alias("ts"))
    if "rating" in frame.columns:
        rating = frame["rating"].cast(pl.Float64, strict=False)
        given = frame["rating"].cast(pl.Utf8).str.strip_chars().fill_null("") != ""
        bad = (given & ~(rating.is_finite() & (rating.abs() <= RATING_MAX)).fill_null(False)).arg_true()
        if bad.len():
            raise DataFormatError(
                path, f"expected a finite number, got {frame['rating'][bad[0]]!r:.60}", lines[bad[0]], rating_field
            )
        frame = frame.with_columns(rating.alias("rating"))
    items = None
    item_file = Path(item_path) if item_path is not None else path.with_suffix(".item")
    if item_path is not None or item_file.exists():
        items = read_recbole_items(
            item_file, item_field, title_field, category_field, description_field, encoding=encoding
        )
        items = restrict_catalogue(items, frame["item_id"], keep_all_items)
    return Dataset.from_frames(
        name or path.stem, frame, items, meta={"source": str(path), "format": "recbole"}
    )
