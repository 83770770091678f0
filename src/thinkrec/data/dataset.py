"""The in-memory dataset every stage reads: interactions, an item catalogue and id maps (polars inside).

Conventions
-----------
* ``user`` and ``item`` are dense 0-based ``Int32`` ids, stable for a given source file.
  ``users.user_id`` / ``items.item_id`` map them back to the original (string) ids.
* ``interactions`` is sorted by (user, ts, order of appearance); ``ts`` is a timestamp when the source has one
  and otherwise the position inside the user's sequence, so sorting by it always gives the time order.
* ``items`` always has the columns of :data:`CATALOG_COLUMNS`; loaders add any extra fields they find.
* ``impressions`` (optional) holds logged lists with click labels (MIND, the synthetic generator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from thinkrec.errors import DataFormatError  # noqa: F401  (re-exported: loaders import it from here)
from thinkrec.utils.io import atomic_dir, write_json

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user": pl.Int32,
    "item": pl.Int32,
    "ts": pl.Int64,
    "rating": pl.Float32,
}
CATALOG_COLUMNS: dict[str, pl.DataType] = {
    "item": pl.Int32,
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "brand": pl.Utf8,
    "categories": pl.List(pl.Utf8),
    "description": pl.Utf8,
    "price": pl.Float64,
}


def catalog_schema(**extra: pl.DataType) -> dict[str, pl.DataType]:
    """Schema of a loader's catalogue frame: :data:`CATALOG_COLUMNS` keyed by the original ``item_id`` (no dense
    ``item`` yet), followed by the loader's ``extra`` columns."""
    return {col: dtype for col, dtype in CATALOG_COLUMNS.items() if col != "item"} | extra


IMPRESSION_SCHEMA: dict[str, pl.DataType] = {
    "impression": pl.Int64,
    "user": pl.Int32,
    "ts": pl.Int64,
    "history": pl.List(pl.Int32),
    "items": pl.List(pl.Int32),
    "clicks": pl.List(pl.Int8),
}



@dataclass
class Dataset:
    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    impressions: pl.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frames(
        cls,
        name: str,
        interactions: pl.DataFrame,
        items: pl.DataFrame | None = None,
        impressions: pl.DataFrame | None = None,
        meta: dict[str, Any] | None = None,
        user_col: str = "user_id",
        item_col: str = "item_id",
        ts_col: str | None = "ts",
        rating_col: str | None = "rating",
    ) -> Dataset:
        """Build a dataset from frames keyed by *original* ids, assigning dense ids.

        ``interactions`` needs ``user_col`` and ``item_col`` (any dtype, cast to string); ``ts_col`` is optional
        (without it the row order inside each user is the time order). Item ids are numbered in order of first
        appearance in the catalogue (when given), then in the interactions, so numbering is stable for a file.
        Impressions, when given, must carry ``user_id``, ``items_orig`` (list of original item ids),
        ``clicks`` and optional ``history_orig``; new items they mention are added to the catalogue.
        """
        inter = interactions.with_row_index("_row")
        inter = inter.with_columns(
            pl.col(user_col).cast(pl.Utf8).alias("user_id"), pl.col(item_col).cast(pl.Utf8).alias("item_id")
        )
        if ts_col and ts_col in inter.columns:
            inter = inter.with_columns(pl.col(ts_col).cast(pl.Int64).alias("ts"))
        else:
            inter = inter.with_columns(pl.col("_row").cast(pl.Int64).alias("ts"))
        rating = (
            pl.col(rating_col).cast(pl.Float32)
            if rating_col and rating_col in inter.columns
            else pl.lit(None, dtype=pl.Float32)
        )
        inter = inter.with_columns(rating.alias("rating"))

        item_order: list[pl.Series] = []
        if items is not None:
            item_order.append(items[item_col if item_col in items.columns else "item_id"].cast(pl.Utf8))
        item_order.append(inter["item_id"])
        if impressions is not None:
            item_order.append(impressions["items_orig"].explode().cast(pl.Utf8).drop_nulls())
            if "history_orig" in impressions.columns:
                item_order.append(impressions["history_orig"].explode().cast(pl.Utf8).drop_nulls())
        all_items = pl.concat(item_order).unique(maintain_order=True)
        item_map = pl.DataFrame({"item_id": all_items}).with_row_index("item").with_columns(pl.col("item").cast(pl.Int32))

        user_order = [inter["user_id"]]
        if impressions is not None:
            user_order.append(impressions["user_id"].cast(pl.Utf8))
        all_users = pl.concat(user_order).unique(maintain_order=True)
        users = pl.DataFrame({"user_id": all_users}).with_row_index("user").with_columns(pl.col("user").cast(pl.Int32))

        inter = (
            inter.join(users, on="user_id", how="left")
            .join(item_map, on="item_id", how="left")
            .sort(["user", "ts", "_row"])
            .select(list(INTERACTION_SCHEMA))
        )
        catalog = _normalise_catalog(item_map, items, item_col)
        imps = None
        if impressions is not None:
            imps = _encode_impressions(impressions, users, item_map)
        return cls(name, inter, catalog, users.select("user", "user_id"), imps, dict(meta or {}))

    # ------------------------------------------------------------------ properties
    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height

    @property
    def n_interactions(self) -> int:
        return self.interactions.height

    def sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """All users' item sequences in time order as CSR: ``(offsets[n_users + 1], items)``."""
        counts = (
            self.interactions.group_by("user").len().sort("user")
        )
        per_user = np.zeros(self.n_users, dtype=np.int64)
        per_user[counts["user"].to_numpy()] = counts["len"].to_numpy()
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(per_user, out=offsets[1:])
        return offsets, self.interactions["item"].to_numpy().astype(np.int64)

    def validate(self) -> Dataset:
        """Check the invariants every stage relies on; returns ``self``, raises :class:`DataFormatError` naming the
        dataset's source and the frame / column otherwise.

        * ``interactions`` has exactly :data:`INTERACTION_SCHEMA`, at least one row, no missing user / item / ts,
          ids in range, and is sorted by (user, ts); ratings are finite where given;
        * ``users`` / ``items`` number their rows ``0..n-1`` with distinct, non-missing original ids;
          ``items`` has the :data:`CATALOG_COLUMNS` with their dtypes, ``title`` / ``brand`` / ``description`` /
          ``categories`` never missing, prices finite where given;
        * ``impressions`` (when present) has :data:`IMPRESSION_SCHEMA`, known users and items, as many 0/1 click
          labels as items and at least one item per impression.
        """
        src = str(self.meta.get("source") or self.name)

        def fail(what: str, frame: str, col: str | None = None) -> None:
            raise DataFormatError(src, f"invalid dataset: {what}", field=f"{frame}.{col}" if col else frame)

        inter, n_users, n_items = self.interactions, self.n_users, self.n_items
        if dict(inter.schema) != INTERACTION_SCHEMA:
            fail(f"schema {dict(inter.schema)} != {INTERACTION_SCHEMA}", "interactions")
        if inter.height == 0:
            fail("no interactions", "interactions")
        for col in ("user", "item", "ts"):
            if inter[col].null_count():
                fail("missing values", "interactions", col)
        for col, n in (("user", n_users), ("item", n_items)):
            lo, hi = inter[col].min(), inter[col].max()
            if lo < 0 or hi >= n:  # type: ignore[operator]
                fail(f"ids outside 0..{n - 1} (min {lo}, max {hi})", "interactions", col)
        rating = inter["rating"].drop_nulls()
        if rating.len() and not rating.is_finite().all():
            fail("non-finite rating", "interactions", "rating")
        u, t = pl.col("user"), pl.col("ts")  # compared, not subtracted: ts may span the whole 64-bit range
        order = inter.select((u > u.shift(1)) | ((u == u.shift(1)) & (t >= t.shift(1))))
        if not order.to_series()[1:].all():
            fail("not sorted by (user, ts)", "interactions")
        for frame, key, idcol, n in (("users", "user", "user_id", n_users), ("items", "item", "item_id", n_items)):
            table: pl.DataFrame = getattr(self, frame)
            if key not in table.columns or idcol not in table.columns:
                fail(f"needs columns {key!r} and {idcol!r}", frame)
            if table.schema[key] != pl.Int32 or table.schema[idcol] != pl.Utf8:
                fail(f"dtypes {table.schema[key]} / {table.schema[idcol]}, expected Int32 / Utf8", frame)
            if not table[key].equals(pl.Series(key, range(n), dtype=pl.Int32)):
                fail(f"rows are not numbered 0..{n - 1}", frame, key)
            if table[idcol].null_count() or table[idcol].n_unique() != n:
                fail("original ids missing or repeated", frame, idcol)
        for col, dtype in CATALOG_COLUMNS.items():
            if col not in self.items.columns or self.items.schema[col] != dtype:
                fail(f"expected dtype {dtype}", "items", col)
            if col in ("title", "brand", "description", "categories") and self.items[col].null_count():
                fail("missing values", "items", col)
        price = self.items["price"].drop_nulls()
        if price.len() and not price.is_finite().all():
            fail("non-finite price", "items", "price")
        imps = self.impressions
        if imps is not None:
            if dict(imps.schema) != IMPRESSION_SCHEMA:
                fail(f"schema {dict(imps.schema)} != {IMPRESSION_SCHEMA}", "impressions")
            for col in IMPRESSION_SCHEMA:
                if imps[col].null_count():
                    fail("missing values", "impressions", col)
            if imps.height:
                if imps["user"].min() < 0 or imps["user"].max() >= n_users:  # type: ignore[operator]
                    fail("unknown users", "impressions", "user")
                for col in ("items", "history"):
                    flat = imps[col].explode().drop_nulls()
                    if flat.len() and (flat.min() < 0 or flat.max() >= n_items):  # type: ignore[operator]
                        fail("unknown items", "impressions", col)
                if (imps["items"].list.len() == 0).any():
                    fail("an impression without items", "impressions", "items")
                if not (imps["items"].list.len() == imps["clicks"].list.len()).all():
                    fail("as many click labels as items expected", "impressions", "clicks")
                labels = imps["clicks"].explode()
                if not labels.is_in([0, 1]).all():
                    fail("click labels must be 0 or 1", "impressions", "clicks")
        return self

    def stats(self) -> dict[str, Any]:
        lengths = self.interactions.group_by("user").len()["len"]
        out: dict[str, Any] = {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "users_with_interactions": int(lengths.len()),
            "items_with_interactions": int(self.interactions["item"].n_unique()),
            "seq_len_min": int(lengths.min() or 0),
            "seq_len_mean": round(float(lengths.mean() or 0.0), 3),
            "seq_len_max": int(lengths.max() or 0),
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "has_ratings": bool(self.interactions["rating"].null_count() < self.n_interactions),
            "items_with_title": int((self.items["title"].fill_null("").str.len_chars() > 0).sum()),
        }
        if self.impressions is not None:
            sizes = self.impressions["items"].list.len()
            out["impressions"] = self.impressions.height
            out["impression_len_mean"] = round(float(sizes.mean() or 0.0), 3)
            out["impression_clicks"] = int(self.impressions["clicks"].list.sum().sum())
        return out

    def item_text(self, template: str = "{title}. Brand: {brand}. Categories: {categories}. {description}") -> list[str]:
        """Item texts from a user-changeable template over catalogue columns (lists are joined by ', ')."""
        rows = self.items.to_dicts()
        texts = []
        for row in rows:
            values = {k: (", ".join(v) if isinstance(v, list) else ("" if v is None else v)) for k, v in row.items()}
            texts.append(" ".join(template.format_map(_Default(values)).split()))
        return texts

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the dataset as parquet + meta.json, atomically (a half-written folder never appears)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.interactions.write_parquet(tmp / "interactions.parquet")
            self.items.write_parquet(tmp / "items.parquet")
            self.users.write_parquet(tmp / "users.parquet")
            if self.impressions is not None:
                self.impressions.write_parquet(tmp / "impressions.parquet")
            write_json(tmp / "meta.json", {"name": self.name, "meta": self.meta, "stats": self.stats()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file}: not a prepared thinkrec dataset (missing meta.json)")
        meta = json.loads(meta_file.read_text())
        imp = path / "impressions.parquet"
        return cls(
            meta["name"],
            pl.read_parquet(path / "interactions.parquet"),
            pl.read_parquet(path / "items.parquet"),
            pl.read_parquet(path / "users.parquet"),
            pl.read_parquet(imp) if imp.exists() else None,
            meta.get("meta", {}),
        )


class _Default(dict):
    def __missing__(self, key: str) -> str:
        return ""


def _normalise_catalog(item_map: pl.DataFrame, items: pl.DataFrame | None, item_col: str) -> pl.DataFrame:
    """Join the catalogue onto the dense item map and guarantee the standard columns and dtypes."""
    if items is None:
        cat = item_map
    else:
        src = items
        if item_col != "item_id" and item_col in src.columns:
            src = src.rename({item_col: "item_id"}) if "item_id" not in src.columns else src.drop("item_id").rename({item_col: "item_id"})
        src = src.with_columns(pl.col("item_id").cast(pl.Utf8)).unique("item_id", keep="first", maintain_order=True)
        src = src.drop([c for c in ("item",) if c in src.columns])
        cat = item_map.join(src, on="item_id", how="left")
    for col, dtype in CATALOG_COLUMNS.items():
        if col not in cat.columns:
            cat = cat.with_columns(pl.lit(None, dtype=dtype).alias(col))
        elif cat.schema[col] != dtype:
            if col == "categories" and cat.schema[col] == pl.Utf8:
                cat = cat.with_columns(pl.col(col).str.split("|").alias(col))
            else:
                cat = cat.with_columns(pl.col(col).cast(dtype, strict=False))
    cat = cat.with_columns(
        pl.col("title").fill_null(""),
        pl.col("brand").fill_null(""),
        pl.col("description").fill_null(""),
        pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))),
    )
    ordered = list(CATALOG_COLUMNS) + [c for c in cat.columns if c not in CATALOG_COLUMNS]
    return cat.select(ordered).sort("item")


def _encode_impressions(imps: pl.DataFrame, users: pl.DataFrame, item_map: pl.DataFrame) -> pl.DataFrame:
    lookup = dict(zip(item_map["item_id"].to_list(), item_map["item"].to_list(), strict=True))
    ulookup = dict(zip(users["user_id"].to_list(), users["user"].to_list(), strict=True))
    n = imps.height
    hist = imps["history_orig"].to_list() if "history_orig" in imps.columns else [[] for _ in range(n)]
    return pl.DataFrame(
        {
            "impression": imps["impression"].cast(pl.Int64) if "impression" in imps.columns else pl.Series(range(n)),
            "user": [ulookup[str(u)] for u in imps["user_id"].to_list()],
            "ts": imps["ts"].cast(pl.Int64) if "ts" in imps.columns else pl.Series(range(n)),
            "history": [[lookup[str(x)] for x in (h or [])] for h in hist],
            "items": [[lookup[str(x)] for x in row] for row in imps["items_orig"].to_list()],
            "clicks": imps["clicks"].to_list(),
        },
        schema=IMPRESSION_SCHEMA,
    )
