"""S3-Rec sequence files (``user item item ...``) with optional item metadata.

Metadata, in order of preference: ``*.items.jsonl`` (one JSON object per item, keyed by ``s3rec_id``),
or P5 ``datamaps.json`` (``id2item`` ASINs only). S3-Rec's ``<Name>_item2attributes.json`` (attribute ids,
no names) fills the catalogue's ``categories`` (as ``attr<id>``) when that metadata has none.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset, catalog_schema
from thinkrec.data.loaders._common import (
    as_text,
    file_or_single,
    finite_float,
    iter_lines,
    parse_json,
    read_text,
    require_file,
    sort_by_int_id,
    split_categories,
)

ITEMS_JSONL_SCHEMA = catalog_schema(asin=pl.Utf8)


def read_s3rec_sequences(path: str | Path) -> pl.DataFrame:
    """Parse ``user item item ...`` lines into (user_id, item_id, ts=position) rows."""
    path = require_file(path, "S3-Rec sequence file")
    users: list[str] = []
    items: list[str] = []
    pos: list[int] = []
    for lineno, line in iter_lines(path):
        parts = line.split()
        if len(parts) < 2:
            raise DataFormatError(
                path, "a sequence line needs a user id and at least one item", lineno, "item #1"
            )
        for col, tok in enumerate(parts):
            # isascii(): str.isdigit() also accepts digits such as '²' that int() rejects.
            if not (tok.isascii() and tok.isdigit()):
                field = "user" if col == 0 else f"item #{col}"
                raise DataFormatError(path, f"expected an integer id, got {tok!r}", lineno, field)
        users.extend([parts[0]] * (len(parts) - 1))
        items.extend(parts[1:])
        pos.extend(range(len(parts) - 1))
    if not users:
        raise DataFormatError(path, "no sequences found")
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "ts": pos},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64},
    )


def read_items_jsonl(path: str | Path, id_field: str = "s3rec_id") -> pl.DataFrame:
    """Read one JSON object per item (the ``*.items.jsonl`` files in the shared data) into catalogue columns."""
    path = require_file(path, "item metadata file")
    rows = []
    for lineno, line in iter_lines(path):
        obj = parse_json(path, line, lineno)
        if not isinstance(obj, dict):
            raise DataFormatError(path, "expected a JSON object per line", lineno)
        item = obj.get(id_field)
        if item is None:
            raise DataFormatError(path, "missing item id", lineno, id_field)
        rows.append(
            {
                "item_id": str(item),
                "title": as_text(obj.get("title") or obj.get("name")),
                "brand": as_text(obj.get("brand")),
                "categories": split_categories(obj.get("categories"), ","),
                "description": as_text(obj.get("description")),
                "price": finite_float(path, obj.get("price"), lineno, "price"),
                "asin": as_text(obj.get("asin") or obj.get("business_id")),
            }
        )
    return pl.DataFrame(rows, schema=ITEMS_JSONL_SCHEMA)


def read_datamaps_items(path: str | Path) -> pl.DataFrame:
    """P5 ``datamaps.json`` -> (item_id, asin) from its ``id2item`` map."""
    path = require_file(path, "P5 datamaps file")
    raw = parse_json(path, read_text(path))
    id2item = raw.get("id2item") if isinstance(raw, dict) else None
    if not isinstance(id2item, dict):
        raise DataFormatError(path, "not a P5 datamaps file (expected an object under 'id2item')", field="id2item")
    return pl.DataFrame(
        {"item_id": [str(k) for k in id2item], "asin": [str(v) for v in id2item.values()]},
        schema={"item_id": pl.Utf8, "asin": pl.Utf8},
    )


def read_item_attributes(path: str | Path) -> pl.DataFrame:
    """S3-Rec ``*_item2attributes.json`` (``{"item": [attribute id, ...]}``, brand and category ids without
    names) -> (item_id, categories = ``["attr<id>", ...]``)."""
    path = require_file(path, "S3-Rec item attributes file")
    raw = parse_json(path, read_text(path))
    if not isinstance(raw, dict):
        raise DataFormatError(path, "expected a JSON object {item: [attribute ids]}")
    cats = []
    for item, attrs in raw.items():
        if not isinstance(attrs, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in attrs):
            raise DataFormatError(path, f"item {item!r}: expected a list of integer attribute ids", field=str(item))
        cats.append([f"attr{a}" for a in attrs])
    return pl.DataFrame({"item_id": [str(k) for k in raw], "categories": cats},
                        schema={"item_id": pl.Utf8, "categories": pl.List(pl.Utf8)})


def load_s3rec(
    sequences: str | Path,
    items_jsonl: str | Path | None = None,
    datamaps: str | Path | None = None,
    name: str | None = None,
    attributes: str | Path | None = None,
) -> Dataset:
    """Load an S3-Rec sequence file; metadata files that do not exist are skipped (they are optional).
    ``attributes`` (S3-Rec ``item2attributes.json``) fills the catalogue's ``categories`` with attribute ids
    where no other metadata names them."""
    sequences = require_file(sequences, "S3-Rec sequence file")
    inter = read_s3rec_sequences(sequences)
    items = None
    if items_jsonl is not None and Path(items_jsonl).exists():
        items = read_items_jsonl(items_jsonl)
    elif datamaps is not None and Path(datamaps).exists():
        items = read_datamaps_items(datamaps)
    if items is None:
        # No catalogue: number items by their integer id anyway, so numbering never depends on line order.
        items = pl.DataFrame({"item_id": inter["item_id"].unique()})
    if attributes is not None and Path(attributes).exists() and "categories" not in items.columns:
        items = items.join(read_item_attributes(attributes), on="item_id", how="left")
    bad = items.filter(~pl.col("item_id").str.contains(r"^[0-9]+$"))
    if bad.height:
        src = items_jsonl if items_jsonl is not None and Path(items_jsonl).exists() else datamaps
        raise DataFormatError(
            src or sequences, f"expected integer item ids, got {bad['item_id'][0]!r}", field="item_id"
        )
    # Number items by their S3-Rec id so dense id = s3rec_id - 1, matching LETTER's 0-based files.
    items = sort_by_int_id(items, "item_id")
    return Dataset.from_frames(
        name or sequences.stem, inter, items, meta={"source": str(sequences), "format": "s3rec"}
    )


def load_s3rec_path(
    path: str | Path,
    name: str | None = None,
    items_jsonl: str | Path | None = None,
    datamaps: str | Path | None = None,
    attributes: str | Path | None = None,
) -> Dataset:
    """``path`` is a sequence file ``<stem>.txt``, or a folder holding exactly one ``*.txt`` sequence file.

    Files next to it are picked up by name unless given explicitly (an explicit path must exist):
    ``<stem>.items.jsonl`` then ``datamaps.json`` for item metadata, and ``<stem>_item2attributes.json``
    for attribute ids (see :func:`load_s3rec`).
    """
    path = file_or_single(
        path, "S3-Rec file or folder", "*.txt", "S3-Rec '*.txt' sequence", skip=("readme.txt", "source.txt")
    )

    def beside(explicit: str | Path | None, default: str, what: str) -> Path:
        return path.with_name(default) if explicit is None else require_file(explicit, what)

    return load_s3rec(
        path,
        beside(items_jsonl, f"{path.stem}.items.jsonl", "item metadata file"),
        beside(datamaps, "datamaps.json", "P5 datamaps file"),
        name=name,
        attributes=beside(attributes, f"{path.stem}_item2attributes.json", "S3-Rec item attributes file"),
    )
