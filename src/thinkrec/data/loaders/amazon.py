"""Amazon review dumps (McAuley lab, 2014 and 2018 releases): ``reviews_X_5.json.gz`` + ``meta_X.json.gz``.

Reviews are one JSON object per line (``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``). The 2014 meta
files are Python-literal dicts (single quotes), so each line is tried as JSON and then with ``ast.literal_eval``
(never ``eval``). Meta -> ``title``, ``brand``, ``categories`` (all category paths flattened, duplicates dropped,
order kept), ``description``, ``price``, plus extra ``sales_type``/``sales_rank`` (2014 ``salesRank``).
Users and items are numbered by first appearance in the reviews file; meta rows of unreviewed items are
skipped unless ``keep_all_items`` (meta files are ~20x bigger than the 5-core item set).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset, catalog_schema
from thinkrec.data.loaders._common import (
    INT64_MAX,
    INT64_MIN,
    _show,
    check_rating,
    file_or_single,
    finite_float,
    iter_lines,
    python_literal,
    require_file,
    split_categories,
)

META_SCHEMA = catalog_schema(sales_type=pl.Utf8, sales_rank=pl.Float64)
_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def _parse_record(path: Path, line: str, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        try:
            obj = python_literal(line)
        except ValueError:
            raise DataFormatError(
                path, "invalid record: neither JSON nor a Python dict literal", lineno
            ) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected one object per line, got {type(obj).__name__}", lineno)
    return obj


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        out = float(value)
    except OverflowError:  # an integer beyond float's range
        return None
    return out if math.isfinite(out) else None


def read_amazon_reviews(path: str | Path) -> pl.DataFrame:
    """Reviews -> (user_id=reviewerID, item_id=asin, ts=unixReviewTime, rating=overall), in file order."""
    path = require_file(
        path, "Amazon reviews file", "download it with thinkrec.data.download.download_amazon2014"
    )
    users, items, ts, ratings = [], [], [], []
    for lineno, line in iter_lines(path):
        obj = _parse_record(path, line, lineno)
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if obj.get(key) in (None, ""):
                raise DataFormatError(path, "missing required field", lineno, key)
        t = obj["unixReviewTime"]
        digits = str(t).strip().removeprefix("-") if isinstance(t, int | str) and not isinstance(t, bool) else ""
        if not (digits.isascii() and digits.isdigit() and INT64_MIN <= int(str(t).strip()) <= INT64_MAX):
            raise DataFormatError(
                path, f"expected an integer epoch time (64 bits), got {_show(t)}", lineno, "unixReviewTime"
            )
        r = check_rating(path, finite_float(path, obj.get("overall"), lineno, "overall"), lineno, "overall")
        users.append(str(obj["reviewerID"]))
        items.append(str(obj["asin"]))
        ts.append(int(str(t).strip()))
        ratings.append(r)
    if not users:
        raise DataFormatError(path, "no reviews found")
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "ts": ts, "rating": ratings},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64, "rating": pl.Float64},
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # 2018 meta stores description as a list of paragraphs
        return " ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def read_amazon_meta(path: str | Path, asins: set[str] | None = None) -> pl.DataFrame:
    """Meta records -> catalogue rows; with ``asins``, other lines are skipped before parsing (for speed)."""
    path = require_file(
        path, "Amazon meta file", "download it with thinkrec.data.download.download_amazon2014"
    )
    rows = []
    for lineno, line in iter_lines(path):
        if asins is not None:
            m = _ASIN_RE.search(line)
            if m is not None and m.group(1) not in asins:
                continue
        obj = _parse_record(path, line, lineno)
        asin = obj.get("asin")
        if asin in (None, ""):
            raise DataFormatError(path, "missing required field", lineno, "asin")
        if asins is not None and str(asin) not in asins:
            continue
        price = obj.get("price")
        try:
            price = float(str(price).replace("$", "").replace(",", "")) if price not in (None, "") else None
        except ValueError:
            price = None  # 2018 meta has free-text prices such as "$10.99 - $12.99"; not worth failing on
        if price is not None and not math.isfinite(price):
            price = None
        rank = obj.get("salesRank") if isinstance(obj.get("salesRank"), dict) else {}
        sales_type, sales_rank = next(iter(rank.items()), (None, None))
        sales_type = None if sales_type is None else str(sales_type)
        sales_rank = _finite_or_none(sales_rank)
        cats = obj.get("categories") if obj.get("categories") is not None else obj.get("category")
        seen: dict[str, None] = {}
        for c in split_categories(cats, ","):
            seen.setdefault(c, None)
        rows.append(
            {
                "item_id": str(asin),
                "title": _text(obj.get("title")),
                "brand": _text(obj.get("brand")),
                "categories": list(seen),
                "description": _text(obj.get("description")),
                "price": price,
                "sales_type": sales_type,
                "sales_rank": None if sales_rank is None else float(sales_rank),
            }
        )
    return pl.DataFrame(rows, schema=META_SCHEMA)


def load_amazon_reviews(
    reviews: str | Path, meta: str | Path | None = None, name: str | None = None, keep_all_items: bool = False
) -> Dataset:
    """Load a reviews dump (optionally with its meta file) as a Dataset; ``rating`` = star rating."""
    reviews = Path(reviews)
    inter = read_amazon_reviews(reviews)
    order = pl.DataFrame({"item_id": inter["item_id"].unique(maintain_order=True)})
    items = order
    if meta is not None:
        asins = None if keep_all_items else set(order["item_id"].to_list())
        catalog = read_amazon_meta(meta, asins)
        items = order.join(catalog, on="item_id", how="left", maintain_order="left")
        if keep_all_items:
            items = pl.concat([items, catalog.join(order, on="item_id", how="anti")], how="diagonal_relaxed")
    stem = reviews.name.removesuffix(".gz").removesuffix(".json")
    return Dataset.from_frames(
        name or stem,
        inter,
        items,
        meta={"source": str(reviews), "meta_file": str(meta) if meta else None, "format": "amazon"},
    )


def load_amazon_path(path: str | Path, name: str | None = None, keep_all_items: bool = False) -> Dataset:
    """``path`` is a ``reviews_X_5.json.gz`` (``meta_X.json.gz`` beside it is used) or a folder with one."""
    path = file_or_single(path, "Amazon reviews file or folder", "reviews_*.json*", "'reviews_*.json(.gz)'")
    category = path.name.removeprefix("reviews_").split(".")[0].removesuffix("_5")
    meta = next(
        (
            m
            for m in (path.with_name(f"meta_{category}.json.gz"), path.with_name(f"meta_{category}.json"))
            if m.exists()
        ),
        None,
    )
    return load_amazon_reviews(path, meta, name=name, keep_all_items=keep_all_items)
