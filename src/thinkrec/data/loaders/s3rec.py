"""S3-Rec sequence files (``user item item ...``) with optional item metadata.

Metadata, in order of preference: ``*.items.jsonl`` (one JSON object per item, keyed by ``s3rec_id``),
or P5 ``datamaps.json`` (``id2item`` ASINs only).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset


def read_s3rec_sequences(path: str | Path) -> pl.DataFrame:
    """Parse ``user item item ...`` lines into (user_id, item_id, ts=position) rows."""
    path = Path(path)
    users: list[str] = []
    items: list[str] = []
    pos: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataFormatError(path, "a sequence line needs a user id and at least one item", lineno)
            for col, tok in enumerate(parts):
                if not tok.isdigit():
                    field = "user" if col == 0 else f"item #{col}"
                    raise DataFormatError(path, f"expected an integer id, got {tok!r}", lineno, field)
            users.extend([parts[0]] * (len(parts) - 1))
            items.extend(parts[1:])
            pos.extend(range(len(parts) - 1))
    if not users:
        raise DataFormatError(path, "no sequences found")
    return pl.DataFrame({"user_id": users, "item_id": items, "ts": pos}, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64})


def read_items_jsonl(path: str | Path, id_field: str = "s3rec_id") -> pl.DataFrame:
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, f"invalid JSON ({exc.msg})", lineno) from None
            if id_field not in obj:
                raise DataFormatError(path, "missing item id", lineno, id_field)
            cats = obj.get("categories") or []
            if isinstance(cats, str):
                cats = [c.strip() for c in cats.split(",") if c.strip()]
            rows.append(
                {
                    "item_id": str(obj[id_field]),
                    "title": obj.get("title") or obj.get("name") or "",
                    "brand": obj.get("brand") or "",
                    "categories": [str(c) for c in cats],
                    "description": obj.get("description") or "",
                    "price": float(obj["price"]) if obj.get("price") not in (None, "") else None,
                    "asin": str(obj.get("asin") or obj.get("business_id") or ""),
                }
            )
    return pl.DataFrame(
        rows,
        schema={
            "item_id": pl.Utf8,
            "title": pl.Utf8,
            "brand": pl.Utf8,
            "categories": pl.List(pl.Utf8),
            "description": pl.Utf8,
            "price": pl.Float64,
            "asin": pl.Utf8,
        },
    )


def load_s3rec(
    sequences: str | Path,
    items_jsonl: str | Path | None = None,
    datamaps: str | Path | None = None,
    name: str | None = None,
) -> Dataset:
    sequences = Path(sequences)
    inter = read_s3rec_sequences(sequences)
    items = None
    if items_jsonl is not None and Path(items_jsonl).exists():
        items = read_items_jsonl(items_jsonl)
    elif datamaps is not None and Path(datamaps).exists():
        try:
            dm = json.loads(Path(datamaps).read_text())
            id2item = dm["id2item"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise DataFormatError(datamaps, f"not a P5 datamaps file ({exc})", field="id2item") from None
        items = pl.DataFrame({"item_id": list(id2item.keys()), "asin": list(id2item.values())})
    if items is not None:
        # Number items by their S3-Rec id so dense id = s3rec_id - 1, matching LETTER's 0-based files.
        items = items.with_columns(pl.col("item_id").cast(pl.Int64).alias("_k")).sort("_k").drop("_k")
    return Dataset.from_frames(name or sequences.stem, inter, items, meta={"source": str(sequences), "format": "s3rec"})
