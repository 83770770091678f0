"""MIND (Microsoft News): ``behaviors.tsv`` impressions with click labels + ``news.tsv`` article text.

``behaviors.tsv``: ``ImpressionID \\t UserID \\t Time \\t History \\t Impressions`` with Time like
``11/9/2019 6:42:51 PM`` (read as UTC), History space-separated news ids and Impressions ``NewsID-label`` in
display order. ``news.tsv``: ``NewsID \\t Category \\t SubCategory \\t Title \\t Abstract \\t URL \\t ...``.

Interactions are the clicked history items followed by the clicks inside impressions:
* a user's history is taken once, at their earliest impression; it keeps its order and gets timestamps in the
  seconds just before that impression (MIND has no history times). History items first seen in a later
  impression's history are added the same way before that impression;
* each clicked candidate is an interaction at its impression's time, in display order.
Items are numbered by first appearance in ``behaviors.tsv`` (history, then candidates, line by line), so the
numbering does not depend on ``news.tsv``; articles nobody saw are dropped unless ``keep_all_items``.
Unlabelled (test-split) impressions are rejected: clicks are required.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from pathlib import Path

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset
from thinkrec.data.loaders._common import iter_fields, parse_int, require_file

BEHAVIOR_FIELDS = ("ImpressionID", "UserID", "Time", "History", "Impressions")
NEWS_FIELDS = (
    "NewsID",
    "Category",
    "SubCategory",
    "Title",
    "Abstract",
    "URL",
    "TitleEntities",
    "AbstractEntities",
)
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def parse_mind_time(path: Path, text: str, lineno: int | None = None) -> int:
    """``11/9/2019 6:42:51 PM`` -> epoch seconds (UTC)."""
    try:
        return calendar.timegm(datetime.strptime(text.strip(), TIME_FORMAT).timetuple())
    except ValueError:
        raise DataFormatError(
            path, f"expected a time like '11/9/2019 6:42:51 PM', got {text!r}", lineno, "Time"
        ) from None


def read_behaviors(path: str | Path) -> pl.DataFrame:
    """Parse ``behaviors.tsv`` into (impression, user_id, ts, history_orig, items_orig, clicks, line)."""
    path = require_file(path, "MIND behaviors.tsv file")
    rows: dict[str, list] = {
        k: [] for k in ("impression", "user_id", "ts", "history_orig", "items_orig", "clicks", "line")
    }
    for lineno, parts in iter_fields(path, "\t", BEHAVIOR_FIELDS):
        imp = parse_int(path, parts[0], lineno, "ImpressionID")
        user = parts[1].strip()
        if not user:
            raise DataFormatError(path, "empty user id", lineno, "UserID")
        items, clicks = [], []
        for tok in parts[4].split():
            news, sep, label = tok.rpartition("-")
            if not sep or not news or label not in ("0", "1"):
                raise DataFormatError(
                    path, f"expected 'NewsID-0' or 'NewsID-1', got {tok!r}", lineno, "Impressions"
                )
            items.append(news)
            clicks.append(int(label))
        if not items:
            raise DataFormatError(path, "an impression needs at least one candidate", lineno, "Impressions")
        rows["impression"].append(imp)
        rows["user_id"].append(user)
        rows["ts"].append(parse_mind_time(path, parts[2], lineno))
        rows["history_orig"].append(parts[3].split())
        rows["items_orig"].append(items)
        rows["clicks"].append(clicks)
        rows["line"].append(lineno)
    if not rows["impression"]:
        raise DataFormatError(path, "no impressions found")
    return pl.DataFrame(
        rows,
        schema={
            "impression": pl.Int64,
            "user_id": pl.Utf8,
            "ts": pl.Int64,
            "history_orig": pl.List(pl.Utf8),
            "items_orig": pl.List(pl.Utf8),
            "clicks": pl.List(pl.Int8),
            "line": pl.Int64,
        },
    )


def read_news(path: str | Path) -> pl.DataFrame:
    """``news.tsv`` -> catalogue rows: title, categories=[category, subcategory], description=abstract, url."""
    path = require_file(path, "MIND news.tsv file")
    rows = []
    # Only the first five columns are required: trimmed news files without URL/entities exist.
    for lineno, parts in iter_fields(path, "\t", NEWS_FIELDS, min_fields=5):
        if not parts[0].strip():
            raise DataFormatError(path, "empty news id", lineno, "NewsID")
        rows.append(
            {
                "item_id": parts[0].strip(),
                "title": parts[3],
                "categories": [c for c in (parts[1].strip(), parts[2].strip()) if c],
                "description": parts[4],
                "url": parts[5] if len(parts) > 5 else "",
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "item_id": pl.Utf8,
            "title": pl.Utf8,
            "categories": pl.List(pl.Utf8),
            "description": pl.Utf8,
            "url": pl.Utf8,
        },
    )


def _interactions(beh: pl.DataFrame) -> pl.DataFrame:
    users, items, ts = [], [], []
    seen: dict[str, set[str]] = {}
    # Earliest impression first, so a user's history is dated before all of their impressions.
    ordered = beh.sort(["ts", "line"]).select("user_id", "ts", "history_orig", "items_orig", "clicks")
    for user, t, hist, cands, clicks in ordered.iter_rows():
        got = seen.setdefault(user, set())
        new = [h for h in hist if h not in got]
        got.update(new)
        k = len(new)
        users.extend([user] * k)
        items.extend(new)
        ts.extend(t - k + i for i in range(k))
        for cand, c in zip(cands, clicks, strict=True):
            if c:
                users.append(user)
                items.append(cand)
                ts.append(t)
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "ts": ts},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64},
    )


def load_mind(
    path: str | Path, news: str | Path | None = None, name: str = "mind", keep_all_items: bool = False
) -> Dataset:
    """Load MIND; ``path`` is ``behaviors.tsv`` or a folder with it (``news.tsv`` beside it is used if present)."""
    path = require_file(path, "MIND behaviors.tsv file or folder")
    if path.is_dir():
        path = require_file(path / "behaviors.tsv", "MIND behaviors.tsv file")
    news_path = Path(news) if news is not None else path.with_name("news.tsv")
    beh = read_behaviors(path)
    # Catalogue order = first appearance in the behaviours (history then candidates), independent of news.tsv.
    order = (
        pl.concat(
            [
                beh.select(pl.col("line"), pl.lit(0).alias("k"), pl.col("history_orig").alias("x")),
                beh.select(pl.col("line"), pl.lit(1).alias("k"), pl.col("items_orig").alias("x")),
            ]
        )
        .sort(["line", "k"], maintain_order=True)
        .select(pl.col("x").explode().alias("item_id"))
        .drop_nulls()
        .unique(maintain_order=True)
    )
    catalog = order
    if news is not None or news_path.exists():
        text = read_news(news_path)
        catalog = order.join(text, on="item_id", how="left", maintain_order="left")
        if keep_all_items:
            catalog = pl.concat([catalog, text.join(order, on="item_id", how="anti")], how="diagonal_relaxed")
    inter = _interactions(beh)
    if inter.height == 0:
        raise DataFormatError(path, "no interactions: no impression has a click and no user has a history")
    imps = beh.sort("line").drop("line")
    meta = {"source": str(path), "format": "mind", "news": str(news_path) if news_path.exists() else None}
    return Dataset.from_frames(name, inter, catalog, impressions=imps, meta=meta, rating_col=None)
