"""LC-Rec / LETTER / MiniOneRec JSON files.

* ``X.inter.json``: ``{"user": [item, ...]}``, each user's full sequence in time order, 0-based ids.
* ``X.item.json`` (optional): ``{"item": {"title": ..., "description": ..., "brand": ..., "categories": ...}}``.
  A description that is a stringified Python list (MiniOneRec) is joined into plain text.
* ``X.index.json`` (optional): ``{"item": ["<a_1>", "<b_2>", ...]}``, the project's semantic-ID tokens.
  Kept as the extra catalogue column ``sid`` (``list[str]``) so the original LETTER codes can be compared
  with ours; nothing else reads it.

Items are numbered by their integer id, so dense id == file id whenever the ids cover ``0..n-1``.
Users keep the order of the inter file's keys (for LETTER files that is ``0..n-1`` too).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from thinkrec.data.dataset import DataFormatError, Dataset, catalog_schema
from thinkrec.data.loaders._common import (
    file_or_single,
    finite_float,
    parse_json,
    python_literal,
    read_text,
    require_file,
    sort_by_int_id,
    split_categories,
)
from thinkrec.data.loaders.s3rec import read_items_jsonl


def _read_json_object(path: Path, what: str) -> tuple[dict[str, Any], str]:
    path = require_file(path, what)
    text = read_text(path)
    obj = parse_json(path, text)
    if not isinstance(obj, dict):
        raise DataFormatError(
            path, f"expected a JSON object mapping ids to values, got {type(obj).__name__}", 1
        )
    return obj, text


def _line_of_key(text: str, key: str) -> int | None:
    """Line of ``"key":`` in a whole-file JSON document (json.loads loses positions; only used for errors)."""
    pos = text.find(json.dumps(key) + ":")
    if pos < 0:
        pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else None


def _key_error(path: Path, text: str, key: str, message: str, field: str) -> DataFormatError:
    """An error about the value under ``key``, naming the line the key is on."""
    return DataFormatError(path, message, _line_of_key(text, key), field)


def _check_key(path: Path, text: str, key: str, what: str) -> str:
    if not (key.isascii() and key.strip().isdigit()):
        raise _key_error(path, text, key, f"expected an integer {what} id as key, got {key!r:.60}", what)
    return key.strip().lstrip("0") or "0"


def read_inter_json(path: str | Path) -> pl.DataFrame:
    """``{"user": [item, ...]}`` -> (user_id, item_id, ts=position) rows, users in file order."""
    path = Path(path)
    obj, text = _read_json_object(path, "LC-Rec inter.json file")
    users: list[str] = []
    items: list[str] = []
    pos: list[int] = []
    for key, seq in obj.items():
        user = _check_key(path, text, key, "user")
        if not isinstance(seq, list):
            raise _key_error(
                path, text, key, f"expected a list of item ids, got {type(seq).__name__}", f"user {key}"
            )
        for i, it in enumerate(seq):
            # bool is an int subclass; JSON true/false are not ids.
            if isinstance(it, bool) or not (
                (isinstance(it, int) and it >= 0) or (isinstance(it, str) and it.isascii() and it.isdigit())
            ):
                raise _key_error(
                    path, text, key, f"expected an integer item id, got {it!r:.60}", f"user {key} item #{i + 1}"
                )
        users.extend([user] * len(seq))
        items.extend(str(it).lstrip("0") or "0" for it in seq)
        pos.extend(range(len(seq)))
    if not users:
        raise DataFormatError(path, "no interactions found")
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "ts": pos},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64},
    )


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v)
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        # MiniOneRec stores descriptions as str(list_of_paragraphs).
        with contextlib.suppress(ValueError):
            parsed = python_literal(text)
            if isinstance(parsed, list):
                return " ".join(str(v).strip() for v in parsed if str(v).strip())
    return text


def read_item_json(path: str | Path) -> pl.DataFrame:
    """``{"item": {"title": ..., "description": ...}}`` -> catalogue columns keyed by ``item_id``."""
    path = Path(path)
    obj, text = _read_json_object(path, "LC-Rec item.json file")
    rows = []
    for key, meta in obj.items():
        item = _check_key(path, text, key, "item")
        if not isinstance(meta, dict):
            raise _key_error(
                path,
                text,
                key,
                f"expected an object with item fields, got {type(meta).__name__}",
                f"item {key}",
            )
        price = finite_float(path, meta.get("price"), _line_of_key(text, key), f"item {key} price")
        rows.append(
            {
                "item_id": item,
                "title": _as_text(meta.get("title")),
                "brand": _as_text(meta.get("brand")),
                "categories": split_categories(meta.get("categories"), ","),
                "description": _as_text(meta.get("description")),
                "price": price,
            }
        )
    return pl.DataFrame(rows, schema=catalog_schema())


def read_index_json(path: str | Path) -> pl.DataFrame:
    """``{"item": ["<a_1>", ...]}`` -> (item_id, sid: list[str])."""
    path = Path(path)
    obj, text = _read_json_object(path, "LC-Rec index.json file")
    ids, sids = [], []
    for key, toks in obj.items():
        ids.append(_check_key(path, text, key, "item"))
        if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
            raise _key_error(path, text, key, "expected a list of token strings", f"item {key}")
        sids.append(toks)
    return pl.DataFrame({"item_id": ids, "sid": sids}, schema={"item_id": pl.Utf8, "sid": pl.List(pl.Utf8)})


def load_lcrec(
    inter_json: str | Path,
    item_json: str | Path | None = None,
    index_json: str | Path | None = None,
    name: str | None = None,
    jsonl_id_field: str = "letter_id",
) -> Dataset:
    """Load LC-Rec/LETTER files; ``item_json`` may also be a ``*.items.jsonl`` keyed by ``jsonl_id_field``.

    Optional files are skipped when ``None``; a path given explicitly must exist.
    """
    inter_json = Path(inter_json)
    inter = read_inter_json(inter_json)
    parts = [inter.select("item_id").unique()]
    meta = None
    if item_json is not None:
        item_json = Path(item_json)
        meta = (
            read_items_jsonl(item_json, id_field=jsonl_id_field)
            if item_json.name.endswith(".jsonl")
            else read_item_json(item_json)
        )
        parts.append(meta.select("item_id"))
    sid = None
    if index_json is not None:
        sid = read_index_json(index_json)
        parts.append(sid.select("item_id"))
    # Numbering by integer id keeps dense id == LC-Rec id (the ids are 0-based and dense in these files).
    catalog = sort_by_int_id(pl.concat(parts).unique("item_id"), "item_id")
    if meta is not None:
        catalog = catalog.join(meta, on="item_id", how="left", maintain_order="left")
    if sid is not None:
        catalog = catalog.join(sid, on="item_id", how="left", maintain_order="left")
    stem = inter_json.name.removesuffix(".json").removesuffix(".inter")
    return Dataset.from_frames(
        name or stem, inter, catalog, meta={"source": str(inter_json), "format": "lcrec"}
    )


def load_lcrec_path(path: str | Path, name: str | None = None) -> Dataset:
    """``path`` is an ``X.inter.json`` file or a folder with exactly one; ``X.item.json``/``X.index.json`` beside it are used."""
    path = file_or_single(path, "LC-Rec inter.json file or folder", "*.inter.json")
    stem = path.name.removesuffix(".inter.json")
    item = path.with_name(f"{stem}.item.json")
    index = path.with_name(f"{stem}.index.json")
    return load_lcrec(path, item if item.exists() else None, index if index.exists() else None, name=name)
