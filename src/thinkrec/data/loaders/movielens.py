"""MovieLens in its common layouts.

* ml-100k original (``u.data`` tab-separated, ``u.item`` pipe-separated latin-1 with 19 genre flags) or the
  RecBole layout (``ml-100k.inter`` / ``ml-100k.item``). Both give the same dense ids; titles differ because
  RecBole strips the year (it is in the ``year`` column either way).
* ml-1m: ``ratings.dat`` (``::``-separated) when present, otherwise the derived implicit
  ``ml-1m_sequences.txt`` (``user movie movie ...`` in time order, no ratings or timestamps); ``movies.dat`` latin-1.
* ml-latest-small / ml-20m / ml-25m: ``ratings.csv`` + ``movies.csv`` (quoted titles, ``|``-joined genres).

Users and items are numbered by their integer MovieLens id (rank among those present), so numbering does not
depend on file order. Movies without ratings are dropped from the catalogue unless ``keep_all_items``.
Catalogue: ``title``, ``categories`` (genres), extra ``year`` (from the title or release date).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset
from thinkrec.data.loaders._common import (
    check_int_id,
    check_rating,
    decode_error,
    iter_fields,
    parse_float,
    parse_int,
    require_file,
    restrict_catalogue,
    sort_by_int_id,
    year_from_title,
)
from thinkrec.data.loaders.recbole import load_recbole
from thinkrec.data.loaders.s3rec import read_s3rec_sequences

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_CATALOG_SCHEMA = {"item_id": pl.Utf8, "title": pl.Utf8, "categories": pl.List(pl.Utf8), "year": pl.Int32}
_NO_GENRE = "(no genres listed)"


def read_ratings(
    path: str | Path,
    sep: str,
    fields: tuple[str, ...] = ("user", "item", "rating", "timestamp"),
    skip: int = 0,
) -> pl.DataFrame:
    """``user sep item sep rating sep timestamp`` lines -> (user_id, item_id, rating, ts)."""
    path = require_file(path, "MovieLens ratings file")
    users, items, ratings, ts = [], [], [], []
    for lineno, parts in iter_fields(path, sep, fields, encoding="latin-1", skip=skip):
        users.append(check_int_id(path, parts[0], lineno, fields[0]))
        items.append(check_int_id(path, parts[1], lineno, fields[1]))
        ratings.append(check_rating(path, parse_float(path, parts[2], lineno, fields[2]), lineno, fields[2]))
        ts.append(parse_int(path, parts[3], lineno, fields[3]))
    if not users:
        raise DataFormatError(path, "no ratings found")
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": ratings, "ts": ts},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "ts": pl.Int64},
    )


def read_ml100k_items(path: str | Path, genre_path: str | Path | None = None) -> pl.DataFrame:
    """``u.item``: ``id|title|release date|video release date|IMDb URL|19 genre flags`` (latin-1)."""
    path = require_file(path, "MovieLens u.item file")
    genres = list(ML100K_GENRES)
    if genre_path is not None and Path(genre_path).exists():
        # u.genre lists "name|index"; use it so a relabelled genre file is honoured.
        listed = [p[0] for _, p in iter_fields(Path(genre_path), "|", ("genre", "index"), encoding="latin-1")]
        genres = listed or genres
    fields = ("movie id", "movie title", "release date", "video release date", "IMDb URL", *genres)
    rows = []
    for lineno, parts in iter_fields(path, "|", fields, encoding="latin-1"):
        flags = parts[5:]
        for g, flag in zip(genres, flags, strict=True):
            if flag not in ("0", "1"):
                raise DataFormatError(path, f"expected a 0/1 genre flag, got {flag!r}", lineno, g)
        title = parts[1]
        year = year_from_title(title)
        if year is None and parts[2][-4:].isascii() and parts[2][-4:].isdigit():
            year = int(parts[2][-4:])
        rows.append(
            {
                "item_id": check_int_id(path, parts[0], lineno, "movie id"),
                "title": title,
                "categories": [g for g, f in zip(genres, flags, strict=True) if f == "1"],
                "year": year,
                "release_date": parts[2],
                "imdb_url": parts[4],
            }
        )
    return pl.DataFrame(rows, schema={**_CATALOG_SCHEMA, "release_date": pl.Utf8, "imdb_url": pl.Utf8})


def read_movies_dat(path: str | Path) -> pl.DataFrame:
    """ml-1m ``movies.dat``: ``MovieID::Title::Genres`` (latin-1)."""
    path = require_file(path, "MovieLens movies.dat file")
    rows = []
    for lineno, parts in iter_fields(path, "::", ("MovieID", "Title", "Genres"), encoding="latin-1"):
        rows.append(
            {
                "item_id": check_int_id(path, parts[0], lineno, "MovieID"),
                "title": parts[1],
                "categories": [g for g in parts[2].split("|") if g and g != _NO_GENRE],
                "year": year_from_title(parts[1]),
            }
        )
    return pl.DataFrame(rows, schema=_CATALOG_SCHEMA)


def _csv_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a headed CSV with the csv module (titles are quoted and contain commas); check header and widths."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise DataFormatError(path, "empty file; expected a header line", 1)
            for req in required:
                if req not in header:
                    raise DataFormatError(
                        path, f"missing required header field (have {', '.join(header)})", 1, req
                    )
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    field = header[len(row)] if len(row) < len(header) else f"column {len(header) + 1}"
                    raise DataFormatError(
                        path,
                        f"expected {len(header)} comma-separated fields, found {len(row)}",
                        reader.line_num,
                        field,
                    )
                rows.append((reader.line_num, row))
        except UnicodeDecodeError as exc:
            raise decode_error(path, "utf-8", exc) from None
        except csv.Error as exc:
            raise DataFormatError(path, f"unreadable record ({exc})", reader.line_num) from None
    return header, rows


def read_ratings_csv(path: str | Path) -> pl.DataFrame:
    """``userId,movieId,rating,timestamp`` with a header (ml-latest-small, ml-20m, ml-25m)."""
    path = require_file(path, "MovieLens ratings.csv file")
    fields = ("userId", "movieId", "rating", "timestamp")
    header, rows = _csv_rows(path, fields)
    iu, ii, ir, it = (header.index(f) for f in fields)
    users, items, ratings, ts = [], [], [], []
    for lineno, row in rows:
        users.append(check_int_id(path, row[iu], lineno, "userId"))
        items.append(check_int_id(path, row[ii], lineno, "movieId"))
        ratings.append(check_rating(path, parse_float(path, row[ir], lineno, "rating"), lineno, "rating"))
        ts.append(parse_int(path, row[it], lineno, "timestamp"))
    if not users:
        raise DataFormatError(path, "no ratings found")
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "rating": ratings, "ts": ts},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "ts": pl.Int64},
    )


def read_movies_csv(path: str | Path) -> pl.DataFrame:
    """``movieId,title,genres`` with a header; genres ``|``-joined."""
    path = require_file(path, "MovieLens movies.csv file")
    header, rows = _csv_rows(path, ("movieId", "title", "genres"))
    im, itl, ig = header.index("movieId"), header.index("title"), header.index("genres")
    out = [
        {
            "item_id": check_int_id(path, row[im], lineno, "movieId"),
            "title": row[itl],
            "categories": [g for g in row[ig].split("|") if g and g != _NO_GENRE],
            "year": year_from_title(row[itl]),
        }
        for lineno, row in rows
    ]
    return pl.DataFrame(out, schema=_CATALOG_SCHEMA)


def _build(
    name: str, inter: pl.DataFrame, items: pl.DataFrame | None, keep_all_items: bool, meta: dict[str, Any]
) -> Dataset:
    # Sort users by integer id (stable, so each user's file order survives equal timestamps) -> dense user = rank.
    inter = sort_by_int_id(inter, "user_id")
    if items is None:
        items = pl.DataFrame({"item_id": inter["item_id"].unique()})
    else:
        items = restrict_catalogue(items, inter["item_id"], keep_all_items)
        missing = inter.filter(~pl.col("item_id").is_in(items["item_id"].implode()))["item_id"].unique()
        if missing.len():
            # Rated movies absent from the catalogue still get an (empty) catalogue row, numbered in id order.
            items = pl.concat([items, pl.DataFrame({"item_id": missing})], how="diagonal_relaxed")
    items = sort_by_int_id(items, "item_id")
    return Dataset.from_frames(name, inter, items, meta={**meta, "format": "movielens"})


def _ratings_source(folder: Path, which: str, original: str, fallback: str, fallback_label: str = "") -> Path:
    """``folder/original`` when present, else ``folder/fallback``; neither: an error naming both."""
    for cand in (original, fallback):
        if (folder / cand).exists():
            return folder / cand
    raise FileNotFoundError(
        f"{folder}: no {which} ratings found (expected '{original}' or {fallback_label}'{fallback}')"
    )


def load_ml100k(folder: str | Path, name: str = "ml-100k", keep_all_items: bool = False) -> Dataset:
    """ml-100k from ``u.data``/``u.item`` when present, else from RecBole ``ml-100k.inter``/``ml-100k.item``."""
    folder = require_file(folder, "ml-100k folder")
    source = _ratings_source(folder, "ml-100k", "u.data", "ml-100k.inter", "RecBole ")
    if source.name == "u.data":
        inter = read_ratings(source, "\t")
        items = (
            read_ml100k_items(folder / "u.item", folder / "u.genre") if (folder / "u.item").exists() else None
        )
        return _build(name, inter, items, keep_all_items, {"source": str(source), "layout": "original"})
    rb = load_recbole(source, name=name, keep_all_items=True, int_ids=True)
    # maintain_order: equal timestamps inside a user must keep the file order through the joins.
    inter = rb.interactions.join(rb.users, on="user", maintain_order="left").join(
        rb.items.select("item", "item_id"), on="item", maintain_order="left"
    )
    items = rb.items.drop("item")
    if "release_year" in items.columns:
        year = pl.col("release_year")
        if isinstance(items.schema["release_year"], pl.List):
            year = year.list.first()
        year = year.cast(pl.Utf8).str.strip_chars().cast(pl.Int32, strict=False)
        items = items.with_columns(year.alias("year")).drop("release_year")
    frame = inter.sort(["user", "ts"], maintain_order=True).select("user_id", "item_id", "rating", "ts")
    return _build(name, frame, items, keep_all_items, {"source": str(source), "layout": "recbole"})


def load_ml1m(folder: str | Path, name: str = "ml-1m", keep_all_items: bool = False) -> Dataset:
    """ml-1m from ``ratings.dat`` when present, else the implicit ``ml-1m_sequences.txt`` (ts = position)."""
    folder = require_file(folder, "ml-1m folder")
    movies = folder / "movies.dat"
    items = read_movies_dat(movies) if movies.exists() else None
    source = _ratings_source(folder, "ml-1m", "ratings.dat", "ml-1m_sequences.txt")
    if source.name == "ratings.dat":
        inter = read_ratings(source, "::", ("UserID", "MovieID", "Rating", "Timestamp"))
        return _build(name, inter, items, keep_all_items, {"source": str(source), "layout": "original"})
    inter = read_s3rec_sequences(source)
    return _build(
        name, inter, items, keep_all_items, {"source": str(source), "layout": "sequences", "implicit": True}
    )


def load_movielens_csv(folder: str | Path, name: str | None = None, keep_all_items: bool = False) -> Dataset:
    """``ratings.csv`` + ``movies.csv`` (ml-latest-small, ml-20m, ml-25m, ml-32m)."""
    folder = require_file(folder, "MovieLens folder")
    ratings = require_file(folder / "ratings.csv", "MovieLens ratings.csv file")
    inter = read_ratings_csv(ratings)
    items = read_movies_csv(folder / "movies.csv") if (folder / "movies.csv").exists() else None
    return _build(
        name or folder.name, inter, items, keep_all_items, {"source": str(ratings), "layout": "csv"}
    )


def load_movielens(folder: str | Path, name: str | None = None, keep_all_items: bool = False) -> Dataset:
    """Detect the MovieLens layout of ``folder`` and load it."""
    folder = require_file(folder, "MovieLens folder")
    if (folder / "u.data").exists() or (folder / "ml-100k.inter").exists():
        return load_ml100k(folder, name or "ml-100k", keep_all_items)
    if (folder / "ratings.dat").exists() or (folder / "ml-1m_sequences.txt").exists():
        return load_ml1m(folder, name or "ml-1m", keep_all_items)
    if (folder / "ratings.csv").exists():
        return load_movielens_csv(folder, name, keep_all_items)
    raise FileNotFoundError(
        f"{folder}: no MovieLens ratings found (expected u.data, ml-100k.inter, ratings.dat, ml-1m_sequences.txt or ratings.csv)"
    )
