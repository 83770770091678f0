"""Random mutations of valid inputs and one *case runner* per fuzzed target (the loaders, the API, ``--set``).

Every runner takes a seeded :class:`random.Random` (the tests pass hypothesis' ``st.randoms()``, the campaign in
``benchmarks/fuzz.py`` a ``random.Random(seed)``), builds a small valid input at random, applies 0-3 random
mutations and runs the target:

* a loader target writes the files into ``workdir`` and loads them through :func:`thinkrec.data.load_dataset`; the
  case is :data:`LOADED` when the dataset passes :meth:`Dataset.validate`, :data:`REJECTED` when the loader raised
  :class:`DataFormatError` naming a file of the case; anything else (another exception, an invariant broken, a valid
  unmutated input refused, an error naming no file of the case) raises :class:`Unexpected` or propagates;
* :class:`ApiFuzzer` posts random bodies to the serving API: a 200 with a well-formed body or a 4xx whose error names
  the field is expected, a 5xx (or an unnamed error) is not;
* :func:`run_set_case` applies random ``key=value`` overrides with :func:`thinkrec.pipeline.config.load_run_config`:
  success or :class:`ConfigError` only.

Each runner records what it did in ``rng``-independent terms on the returned :class:`Outcome` (``mutations``), so a
failure can be replayed from its seed. Nothing here imports hypothesis; mutations are deterministic given ``rng``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

LOADED, REJECTED = "loaded", "rejected"
LOADER_TARGETS = ("s3rec", "lcrec", "recbole", "movielens", "mind", "csv", "parquet", "amazon")
TARGETS = (*LOADER_TARGETS, "api", "set")


class Unexpected(AssertionError):
    """A case ended in a way the target's contract does not allow (besides an exception of another type)."""


@dataclass
class Outcome:
    status: str  # LOADED / REJECTED (for the API: "ok" = 200, "rejected" = 4xx)
    mutations: list[str] = field(default_factory=list)
    detail: str = ""


# ---------------------------------------------------------------------------------------------- junk values
JUNK_TOKENS = [
    "", " ", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e308", "1e19", "-1", "-0", "0",
    "00", "007", "1.5", "2.0", "1e3", "-3.7", "99999999999999999999999999", "9223372036854775807",
    "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "18446744073709551616", "abc", "²", "٣",
    "１", "\x00", "\ufeff1", "1 2", '"', "'", '"quoted"', "'a', 'b'", "[", "]", "{", "}", "[1, 2]", "{'a': 1}",
    "null", "None", "true", "False", "0x1F", "1_000", "+5", " 7 ", "\\N", "é", "ÿ", "日本", "\u2028", "N/A", "-",
    "--", "::", "|", ",", ";", "\t", "a\tb", "a\nb", "\r", "11/9/2019 6:42:51 PM", "13/45/2019 99:99:99 XM",
    "2/30/2019 1:00:00 AM", "2019-11-09", "2019-11-09T18:42:51Z", "2019-11-09 18:42:51+05:00", "2019-13-45",
    "1970-01-01 00:00:00", "10000-01-01", "0001-01-01", "N1-1", "N1-2", "N5-0 N6-1", "-N1", "1e-400", "1" * 400,
    "[" * 300 + "]" * 300, "(" * 300, "'" + "x" * 50,
]
# column names the loaders or the dataset use for themselves (a file may well have such a column)
_RESERVED_NAMES = ["_i", "_row", "_k", "_n", "item", "user", "ts", "rating", "user_id", "item_id", "title", "categories",
                   "price", "line", "impression", "sid", "year", "history_orig", "items_orig"]
_BAD_BYTES = [b"\xff", b"\xfe\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\r", b"\n", b"\t", b'"', b"\x1a",
              b"\xef\xbb\xbf", b"\\", b"\x85"]


def junk_token(rng: random.Random) -> str:
    """A string that is often not what a field expects: number edge cases, ids, dates, quotes, odd unicode."""
    r = rng.random()
    if r < 0.7:
        return rng.choice(JUNK_TOKENS)
    if r < 0.8:
        return str(rng.choice([rng.randint(-10, 10), rng.randint(-(10**20), 10**20), rng.randint(0, 2**64)]))
    if r < 0.9:
        return repr(rng.choice([rng.uniform(-1e6, 1e6), rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300)]))
    alphabet = string.printable + "éß日本\u00a0\u200b\ufeff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-able value of a random type (huge and non-finite numbers, nested junk)."""
    kinds = ["int", "bigint", "neg", "float", "nan", "inf", "str", "bool", "null", "list", "dict", "empty"]
    if depth > 2:
        kinds = kinds[:9]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(0, 20)
    if kind == "bigint":
        return rng.choice([2**63, 2**64 + 1, 10**30, -(2**63) - 1, 10**400])
    if kind == "neg":
        return rng.randint(-(10**6), -1)
    if kind == "float":
        return rng.choice([1.5, -0.0, 1e308, -1e308, 5e-324, 3.0])
    if kind == "nan":
        return math.nan
    if kind == "inf":
        return rng.choice([math.inf, -math.inf])
    if kind == "str":
        return junk_token(rng)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [junk_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {junk_token(rng): junk_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.choice(["", [], {}])


# ---------------------------------------------------------------------------------------------- file models
@dataclass
class Delimited:
    """Rows of fields joined by ``sep`` (``quote``: written with the csv module, i.e. quoted where needed)."""

    rows: list[list[str]]
    sep: str
    header: bool = False
    quote: bool = False
    encoding: str = "utf-8"

    def dump(self) -> bytes:
        if self.quote:
            buf = io.StringIO()
            csv.writer(buf, delimiter=self.sep, lineterminator="\n").writerows(self.rows)
            text = buf.getvalue()
        else:
            text = "".join(self.sep.join(r) + "\n" for r in self.rows)
        return text.encode(self.encoding, errors="replace")


_RAW = "\x00raw{}\x00"


@dataclass
class JsonDoc:
    """One JSON document (``lines=False``) or one value per line (``lines=True``; ``python`` lines as Python
    literals, as Amazon's 2014 meta files). ``raw`` splices texts json.dumps cannot write (deep nesting)."""

    value: Any
    lines: bool = False
    python: bool = False
    indent: int | None = None
    raw: list[str] = field(default_factory=list)

    def _one(self, v: Any) -> str:
        text = repr(v) if self.python and isinstance(v, dict) else json.dumps(v, indent=self.indent, allow_nan=True)
        for i, r in enumerate(self.raw):
            text = text.replace(json.dumps(_RAW.format(i)), r).replace(repr(_RAW.format(i)), r)
        return text

    def dump(self) -> bytes:
        if self.lines:
            return "".join(self._one(v) + "\n" for v in self.value).encode("utf-8", errors="surrogatepass")
        return self._one(self.value).encode("utf-8", errors="surrogatepass")


@dataclass
class Table:
    """A frame written as Parquet."""

    frame: pl.DataFrame

    def dump(self) -> bytes:
        buf = io.BytesIO()
        self.frame.write_parquet(buf)
        return buf.getvalue()


Model = Delimited | JsonDoc | Table | bytes


@dataclass
class FileSlot:
    content: Model
    gz: bool = False
    weight: float = 1.0  # how often mutations pick this file


def _dump(slot: FileSlot) -> bytes:
    data = slot.content if isinstance(slot.content, bytes) else slot.content.dump()
    return gzip.compress(data, mtime=0) if slot.gz else data


# ---------------------------------------------------------------------------------------------- mutators
def _pos(rng: random.Random, n: int) -> int:
    return rng.randint(0, max(n, 0))


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One byte-level mutation: truncation, empty file, bad bytes, deleted / repeated spans, other encodings."""
    n = len(data)
    kind = rng.choice(["truncate", "empty", "insert", "overwrite", "delete", "repeat", "reencode", "crlf", "bom",
                       "nul", "append_line", "cut_line_end"])
    if kind == "truncate":
        return data[: _pos(rng, n - 1)], kind
    if kind == "empty":
        return rng.choice([b"", b"\n", b" \n\n", b"\t"]), kind
    if kind in ("insert", "nul"):
        p = _pos(rng, n)
        junk = b"\x00" if kind == "nul" else rng.choice(_BAD_BYTES) * rng.randint(1, 3)
        return data[:p] + junk + data[p:], kind
    if kind == "overwrite" and n:
        p = rng.randrange(n)
        return data[:p] + bytes([rng.randrange(256)]) + data[p + 1:], kind
    if kind == "delete" and n:
        a = rng.randrange(n)
        return data[:a] + data[a + rng.randint(1, 20):], kind
    if kind == "repeat" and n:
        a = rng.randrange(n)
        span = data[a: a + rng.randint(1, 40)]
        return data[:a] + span * rng.randint(2, 4) + data[a:], kind
    if kind == "reencode":
        enc = rng.choice(["latin-1", "utf-16", "utf-16-le", "cp1252", "utf-32", "utf-8-sig"])
        return data.decode("utf-8", errors="replace").encode(enc, errors="replace"), f"{kind}:{enc}"
    if kind == "crlf":
        return data.replace(b"\n", rng.choice([b"\r\n", b"\r", b"\n\n", b"\x85"])), kind
    if kind == "bom":
        return b"\xef\xbb\xbf" + data, kind
    if kind == "append_line":
        return data + junk_token(rng).encode("utf-8", errors="replace") + b"\n", kind
    if kind == "cut_line_end":
        return data.rstrip(b"\n"), kind
    return data[: n // 2], "truncate"


def mutate_delimited(rng: random.Random, d: Delimited) -> str:
    """One row / field / column mutation, in place; returns its name."""
    rows = d.rows
    body0 = 1 if d.header else 0
    kind = rng.choice(["field", "field", "field", "drop_field", "add_field", "dup_row", "dup_all", "del_row", "swap_rows",
                       "swap_cols", "drop_col", "header", "only_header", "blank_row", "join_rows"])
    if not rows:
        rows.append([junk_token(rng)])
        return "add_row"
    r = rng.randrange(len(rows))
    width = max(len(x) for x in rows) or 1
    if kind == "field" and rows[r]:
        c = rng.randrange(len(rows[r]))
        rows[r][c] = junk_token(rng)
        return f"field[{r},{c}]"
    if kind == "drop_field" and rows[r]:
        del rows[r][rng.randrange(len(rows[r]))]
        return f"drop_field[{r}]"
    if kind == "add_field":
        rows[r].insert(_pos(rng, len(rows[r])), junk_token(rng))
        return f"add_field[{r}]"
    if kind == "dup_row":
        rows.insert(r, list(rows[r]))
        return f"dup_row[{r}]"
    if kind == "dup_all":
        rows.extend([list(x) for x in rows[body0:]] * rng.randint(1, 3))
        return kind
    if kind == "del_row":
        del rows[r]
        return f"del_row[{r}]"
    if kind == "swap_rows" and len(rows) > 1:
        a, b = rng.sample(range(len(rows)), 2)
        rows[a], rows[b] = rows[b], rows[a]
        return f"swap_rows[{a},{b}]"
    if kind == "swap_cols" and width > 1:
        a, b = rng.sample(range(width), 2)
        for row in rows:
            if a < len(row) and b < len(row):
                row[a], row[b] = row[b], row[a]
        return f"swap_cols[{a},{b}]"
    if kind == "drop_col":
        c = rng.randrange(width)
        for row in rows:
            if c < len(row):
                del row[c]
        return f"drop_col[{c}]"
    if kind == "header" and d.header and rows[0]:
        c = rng.randrange(len(rows[0]))
        rows[0][c] = rng.choice([junk_token(rng), rows[0][c].upper(), rows[0][c] + ":" + junk_token(rng), "",
                                 rng.choice(rows[0]), rng.choice(_RESERVED_NAMES)])
        return f"header[{c}]"
    if kind == "only_header":
        del rows[body0:]
        return kind
    if kind == "blank_row":
        rows.insert(_pos(rng, len(rows)), [""] * rng.randint(0, width))
        return kind
    if kind == "join_rows" and len(rows) > 1:
        a = rng.randrange(len(rows) - 1)
        rows[a] = rows[a] + rows.pop(a + 1)
        return f"join_rows[{a}]"
    rows[r] = [junk_token(rng) for _ in rows[r]]
    return f"junk_row[{r}]"


def _json_paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _json_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _json_paths(v, (*path, i))
    return out


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def mutate_json(rng: random.Random, doc: JsonDoc) -> str:
    """One tree mutation (a node replaced by junk of another type, keys dropped / added / renamed, lines repeated
    or dropped, deep nesting spliced in), in place; returns its name."""
    kind = rng.choice(["replace", "replace", "replace", "del_key", "add_key", "rename_key", "wrap", "deep", "dup_item",
                       "del_item", "python"])
    if kind == "python" and doc.lines:
        doc.python = not doc.python
        return kind
    paths = _json_paths(doc.value)
    path = rng.choice(paths)
    if kind == "deep":
        i = len(doc.raw)
        d = rng.choice([50, 200, 1000, 5000, 30000])
        doc.raw.append(rng.choice(["[", '{"a":']) * d + "1" + "]" * d if rng.random() < 0.5 else "[" * d + "]" * d)
        kind += str(d)
        if not path:
            doc.value = _RAW.format(i)
            return kind
        _get(doc.value, path[:-1])[path[-1]] = _RAW.format(i)
        return f"{kind}@{path}"
    if kind == "wrap" and path:
        parent = _get(doc.value, path[:-1])
        parent[path[-1]] = [parent[path[-1]]]
        return f"wrap@{path}"
    node = _get(doc.value, path)
    if kind in ("del_key", "add_key", "rename_key") and isinstance(node, dict):
        if kind == "add_key" or not node:
            node[junk_token(rng)] = junk_value(rng)
            return f"add_key@{path}"
        key = rng.choice(list(node))
        if kind == "del_key":
            del node[key]
            return f"del_key@{path}"
        node[rng.choice([junk_token(rng), str(key).upper(), f" {key}", "-1", "1e3", "99999999999999999999"])] = node.pop(key)
        return f"rename_key@{path}"
    if kind in ("dup_item", "del_item") and isinstance(node, list) and node:
        i = rng.randrange(len(node))
        if kind == "dup_item":
            node.insert(i, json.loads(json.dumps(node[i])) if not isinstance(node[i], str) else node[i])
        else:
            del node[i]
        return f"{kind}@{path}"
    if not path:
        doc.value = junk_value(rng) if not doc.lines else [junk_value(rng) for _ in range(rng.randint(0, 2))]
        return "replace_root"
    _get(doc.value, path[:-1])[path[-1]] = junk_value(rng)
    return f"replace@{path}"


def _junk_series(rng: random.Random, s: pl.Series) -> pl.Series:
    """``s`` with one cell set to an edge value of its own dtype (NaN / inf / null / negative / huge / odd text)."""
    n = s.len()
    if n == 0:
        return s
    i = rng.randrange(n)
    vals = s.to_list()
    dt = s.dtype
    if dt.is_float():
        vals[i] = rng.choice([math.nan, math.inf, -math.inf, None, -1.0, 1e300, -1e300, 0.5])
    elif dt.is_integer():
        info = {pl.Int64: (-(2**63), 2**63 - 1), pl.Int32: (-(2**31), 2**31 - 1)}.get(dt, (0, 127))
        vals[i] = rng.choice([None, -1, 0, info[0], info[1], rng.randint(*info)])
    elif dt == pl.Utf8:
        vals[i] = rng.choice([None, junk_token(rng)])
    elif dt == pl.Boolean:
        vals[i] = None
    else:
        vals[i] = None
    return pl.Series(s.name, vals, dtype=dt)


def _cast_series(rng: random.Random, s: pl.Series) -> pl.Series:
    """``s`` as another type: text, float, int, bool, list, datetime (with / without zone), date, null, binary."""
    target = rng.choice(["str", "float", "int", "bool", "list", "datetime", "datetime_tz", "date", "null", "binary",
                         "categorical", "decimal", "duration", "int8"])
    if target == "str":
        return s.cast(pl.Utf8)
    if target == "float":
        return s.cast(pl.Float64, strict=False)
    if target == "int":
        return s.cast(pl.Int64, strict=False)
    if target == "int8":
        return s.cast(pl.Int8, strict=False)
    if target == "bool":
        return pl.Series(s.name, [rng.random() < 0.5 for _ in range(s.len())])
    if target == "list":
        return pl.Series(s.name, [[v] for v in s.cast(pl.Utf8).to_list()], dtype=pl.List(pl.Utf8))
    if target in ("datetime", "datetime_tz"):
        out = s.cast(pl.Int64, strict=False).cast(pl.Datetime("ms"))
        return out.dt.replace_time_zone("Asia/Kolkata") if target == "datetime_tz" else out
    if target == "date":
        return s.cast(pl.Int32, strict=False).cast(pl.Date)
    if target == "null":
        return pl.Series(s.name, [None] * s.len(), dtype=pl.Null)
    if target == "binary":
        return s.cast(pl.Utf8).cast(pl.Binary)
    if target == "categorical":
        return s.cast(pl.Utf8).cast(pl.Categorical)
    if target == "decimal":
        return s.cast(pl.Float64, strict=False).cast(pl.Decimal(38, 2), strict=False)
    return s.cast(pl.Int64, strict=False).cast(pl.Duration("ms"))


def mutate_table(rng: random.Random, t: Table) -> str:
    """One frame mutation: a cell's edge value, a column cast to another type, dropped / renamed / swapped / extra
    columns, repeated or dropped rows."""
    f = t.frame
    kind = rng.choice(["cell", "cell", "cast", "cast", "drop_col", "rename", "swap_names", "add_col", "dup_rows",
                       "empty", "del_row", "all_null"])
    if not f.width:
        t.frame = pl.DataFrame({junk_token(rng) or "x": [1]})
        return "new_frame"
    col = rng.choice(f.columns)
    try:
        if kind == "cell":
            t.frame = f.with_columns(_junk_series(rng, f[col]))
            return f"cell:{col}"
        if kind == "cast":
            t.frame = f.with_columns(_cast_series(rng, f[col]))
            return f"cast:{col}:{t.frame.schema[col]}"
        if kind == "all_null":
            t.frame = f.with_columns(pl.lit(None, dtype=f.schema[col]).alias(col))
            return f"all_null:{col}"
    except Exception:  # noqa: BLE001 - a cast polars refuses only means this mutation does not apply
        return "skip"
    if kind == "drop_col":
        t.frame = f.drop(col)
        return f"drop_col:{col}"
    if kind == "rename":
        new = rng.choice([col.upper(), f" {col}", junk_token(rng) or "_", col + "_x", rng.choice(_RESERVED_NAMES)])
        if new not in f.columns:
            t.frame = f.rename({col: new})
        return f"rename:{col}"
    if kind == "swap_names" and f.width > 1:
        a, b = rng.sample(f.columns, 2)
        t.frame = f.rename({a: b, b: a})
        return f"swap_names:{a},{b}"
    if kind == "add_col":
        name = rng.choice([junk_token(rng) or "extra", rng.choice(_RESERVED_NAMES)])
        if name not in f.columns:
            t.frame = f.with_columns(pl.Series(name, [junk_token(rng) for _ in range(f.height)], dtype=pl.Utf8))
        return "add_col"
    if kind == "dup_rows":
        t.frame = pl.concat([f] * rng.randint(2, 4))
        return kind
    if kind == "empty":
        t.frame = f.clear()
        return kind
    if f.height:
        i = rng.randrange(f.height)
        t.frame = pl.concat([f[:i], f[i + 1:]])
    return "del_row"


def mutate_files(rng: random.Random, files: dict[str, FileSlot], n: int) -> list[str]:
    """Apply ``n`` random mutations to random files (weighted by ``FileSlot.weight``); structured mutations while a
    file is still a model, byte-level ones (which turn it into bytes) otherwise. Returns their names."""
    names = list(files)
    done = []
    for _ in range(n):
        name = rng.choices(names, weights=[files[k].weight for k in names])[0]
        slot = files[name]
        if slot.gz and rng.random() < 0.15:
            data = _dump(slot)
            data, what = mutate_bytes(rng, data)
            slot.content, slot.gz = data, False
            done.append(f"{name}:gz:{what}")
            continue
        structured = not isinstance(slot.content, bytes) and rng.random() < 0.7
        if structured and isinstance(slot.content, Delimited):
            done.append(f"{name}:{mutate_delimited(rng, slot.content)}")
        elif structured and isinstance(slot.content, JsonDoc):
            done.append(f"{name}:{mutate_json(rng, slot.content)}")
        elif structured and isinstance(slot.content, Table):
            done.append(f"{name}:{mutate_table(rng, slot.content)}")
        else:
            raw = slot.content if isinstance(slot.content, bytes) else slot.content.dump()
            slot.content, what = mutate_bytes(rng, raw)
            done.append(f"{name}:{what}")
    return done


# ---------------------------------------------------------------------------------------------- valid fixtures
Loader = Callable[[Path], Any]


def _ids(rng: random.Random, n: int, lo: int = 0, hi: int = 30) -> list[int]:
    return rng.sample(range(lo, hi), n)


def _seqs(rng: random.Random, users: list[int], items: list[int]) -> dict[int, list[int]]:
    return {u: [rng.choice(items) for _ in range(rng.randint(1, 5))] for u in users}


_WORDS = ["Soap", "Brush", "Red Lipstick", "Café", "Toy Story", "Nail 'Polish'", 'The "Best"', "Peach, Giant",
          "日本語", "a|b", ""]


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS)


def _fx_s3rec(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    users, items = _ids(rng, rng.randint(1, 4), 1, 60), _ids(rng, rng.randint(1, 6), 1, 40)
    seqs = _seqs(rng, users, items)
    files = {"s3/Toy.txt": FileSlot(Delimited([[str(u), *map(str, s)] for u, s in seqs.items()], " "), weight=3)}
    meta = rng.choice(["none", "jsonl", "datamaps", "attrs", "datamaps+attrs"])
    catalogue = items + _ids(rng, rng.randint(0, 2), 40, 50)
    if meta == "jsonl":
        rows = [{"s3rec_id": rng.choice([i, str(i)]), "title": _word(rng), "brand": _word(rng),
                 "categories": rng.choice([["A", "B"], "A, B", [["A", "B"]], None]),
                 "price": rng.choice([None, 3.5, "2", ""]), "asin": f"B{i:03d}"} for i in catalogue]
        files["s3/Toy.items.jsonl"] = FileSlot(JsonDoc(rows, lines=True))
    if "datamaps" in meta:
        files["s3/datamaps.json"] = FileSlot(JsonDoc({"id2item": {str(i): f"B{i:03d}" for i in catalogue},
                                                      "user2id": {}}))
    if "attrs" in meta:
        files["s3/Toy_item2attributes.json"] = FileSlot(
            JsonDoc({str(i): rng.sample(range(20), rng.randint(0, 3)) for i in catalogue}))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        return load_dataset(str(root / "s3"), format="s3rec")

    return files, load


def _fx_lcrec(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    users, items = _ids(rng, rng.randint(1, 4), 0, 10), _ids(rng, rng.randint(1, 6), 0, 12)
    inter = {str(u): [rng.choice([i, str(i)]) if rng.random() < 0.1 else i for i in s]
             for u, s in _seqs(rng, users, items).items()}
    files = {"lc/Toy.inter.json": FileSlot(JsonDoc(inter, indent=rng.choice([None, 2])), weight=3)}
    if rng.random() < 0.7:
        meta = {str(i): {"title": _word(rng), "description": rng.choice(["Soft", "['Gentle', 'daily']", ["a", "b"], ""]),
                         "brand": _word(rng), "categories": rng.choice(["Beauty, Tools", ["A"], None]),
                         "price": rng.choice([None, "3.5", 2, ""])} for i in items}
        files["lc/Toy.item.json"] = FileSlot(JsonDoc(meta, indent=rng.choice([None, 2])))
    if rng.random() < 0.5:
        files["lc/Toy.index.json"] = FileSlot(JsonDoc({str(i): [f"<a_{i}>", f"<b_{i % 3}>"] for i in items}))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        return load_dataset(str(root / "lc"), format="lcrec")

    return files, load


def _recbole_inter_rows(rng: random.Random, users: list[str], items: list[str], rating: bool, ts: str | None,
                        extra: bool) -> list[list[str]]:
    header = ["user_id:token", "item_id:token"]
    if rating:
        header.append("rating:float")
    if ts:
        header.append(f"timestamp:{ts}")
    if extra:
        header.append("tags:token_seq")
    rows = [header]
    for _ in range(rng.randint(1, 6)):
        row = [rng.choice(users), rng.choice(items)]
        if rating:
            row.append(rng.choice(["4", "2.5", "5", ""]))
        if ts:
            row.append(str(rng.choice([rng.randint(0, 10**9), rng.randint(0, 10**9) + 0.5])))
        if extra:
            row.append(rng.choice(["a b", "", "c"]))
        rows.append(row)
    return rows


def _recbole_item_rows(rng: random.Random, items: list[str]) -> list[list[str]]:
    rows = [["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq", "price:float",
             "score:float_seq"]]
    for i in [*items, "i99"]:
        rows.append([i, _word(rng).replace("\t", " "), str(rng.randint(1900, 2020)), rng.choice(["Drama", "A B", ""]),
                     rng.choice(["", "1.5", "3"]), rng.choice(["", "1 2", "3"])])
    return rows


def _fx_recbole(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    users = [f"u{i}" for i in _ids(rng, rng.randint(1, 4), 0, 9)]
    items = [f"i{i}" for i in _ids(rng, rng.randint(1, 5), 0, 9)]
    inter = _recbole_inter_rows(rng, users, items, rng.random() < 0.7, rng.choice(["float", "float", "token", None]),
                                rng.random() < 0.3)
    files = {"toy/toy.inter": FileSlot(Delimited(inter, "\t", header=True), weight=3)}
    if rng.random() < 0.6:
        files["toy/toy.item"] = FileSlot(Delimited(_recbole_item_rows(rng, items), "\t", header=True))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        return load_dataset(str(root / "toy"), format="recbole")

    return files, load


_GENRES = 19


def _fx_movielens(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    users, items = _ids(rng, rng.randint(1, 4), 1, 50), _ids(rng, rng.randint(1, 5), 1, 60)
    ratings = [[str(rng.choice(users)), str(rng.choice(items)), rng.choice(["4", "3", "1", "4.5"]),
                str(rng.randint(8 * 10**8, 10**9))] for _ in range(rng.randint(1, 6))]
    layout = rng.choice(["100k", "100k-recbole", "1m", "1m-seq", "csv"])
    files: dict[str, FileSlot] = {}
    titles = [f"{_word(rng).replace('|', ' ').replace('::', ' ')} ({rng.randint(1950, 2010)})" for _ in items]
    if layout == "100k":
        files["ml/u.data"] = FileSlot(Delimited(ratings, "\t"), weight=3)
        if rng.random() < 0.8:
            rows = []
            for i, t in zip(items, titles, strict=True):
                flags = ["1" if rng.random() < 0.2 else "0" for _ in range(_GENRES)]
                rows.append([str(i), t, "01-Jan-1995", "", "http://imdb/x", *flags])
            files["ml/u.item"] = FileSlot(Delimited(rows, "|", encoding="latin-1"))
        if rng.random() < 0.5:
            from thinkrec.data.loaders.movielens import ML100K_GENRES

            files["ml/u.genre"] = FileSlot(Delimited([[g, str(i)] for i, g in enumerate(ML100K_GENRES)], "|"))
    elif layout == "100k-recbole":
        head = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        files["ml/ml-100k.inter"] = FileSlot(Delimited([head, *ratings], "\t", header=True), weight=3)
        if rng.random() < 0.8:
            rows = [["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]]
            rows += [[str(i), t.rsplit(" (", 1)[0], t[-5:-1], rng.choice(["Drama", "Action Comedy"])]
                     for i, t in zip(items, titles, strict=True)]
            files["ml/ml-100k.item"] = FileSlot(Delimited(rows, "\t", header=True))
    elif layout == "1m":
        files["ml/ratings.dat"] = FileSlot(Delimited(ratings, "::"), weight=3)
    elif layout == "1m-seq":
        seqs = _seqs(rng, users, items)
        files["ml/ml-1m_sequences.txt"] = FileSlot(Delimited([[str(u), *map(str, s)] for u, s in seqs.items()], " "),
                                                   weight=3)
    else:
        files["ml/ratings.csv"] = FileSlot(Delimited([["userId", "movieId", "rating", "timestamp"], *ratings], ",",
                                                     header=True, quote=True), weight=3)
        if rng.random() < 0.8:
            rows = [["movieId", "title", "genres"]]
            rows += [[str(i), t, rng.choice(["Comedy|Drama", "(no genres listed)", ""])]
                     for i, t in zip(items, titles, strict=True)]
            files["ml/movies.csv"] = FileSlot(Delimited(rows, ",", header=True, quote=True))
    if layout.startswith("1m") and rng.random() < 0.8:
        rows = [[str(i), t, rng.choice(["Drama|Musical", "(no genres listed)", "Action"])]
                for i, t in zip(items, titles, strict=True)]
        files["ml/movies.dat"] = FileSlot(Delimited(rows, "::", encoding="latin-1"))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        return load_dataset(str(root / "ml"), format="movielens")

    return files, load


def _mind_time(rng: random.Random) -> str:
    h = rng.randint(1, 12)
    return f"11/{rng.randint(1, 30)}/2019 {h}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice(['AM', 'PM'])}"


def _fx_mind(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    news = [f"N{i}" for i in _ids(rng, rng.randint(2, 8), 1, 30)]
    rows = []
    for j, imp in enumerate(_ids(rng, rng.randint(1, 5), 1, 100)):
        hist = " ".join(rng.sample(news, rng.randint(0, min(3, len(news)))))
        cands = " ".join(f"{n}-{rng.choice('01') if j or k else '1'}"  # the first impression has a click
                         for k, n in enumerate(rng.sample(news, rng.randint(1, min(4, len(news))))))
        rows.append([str(imp), f"U{rng.randint(1, 4)}", _mind_time(rng), hist, cands])
    files = {"mind/behaviors.tsv": FileSlot(Delimited(rows, "\t"), weight=3)}
    if rng.random() < 0.7:
        nrows = [[n, "sports", "football", _word(rng).replace("\t", " "), "Abstract.", f"https://x/{n}", "[]", "[]"]
                 for n in news[: rng.randint(0, len(news))]]
        if rng.random() < 0.3:
            nrows = [r[:5] for r in nrows]
        files["mind/news.tsv"] = FileSlot(Delimited(nrows, "\t"))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        return load_dataset(str(root / "mind"), format="mind")

    return files, load


def _table_frames(rng: random.Random) -> tuple[dict[str, list], dict[str, list] | None, dict[str, Any]]:
    """Interactions (and maybe an item table) as columns, and the load_table options naming their columns."""
    users, items = _ids(rng, rng.randint(1, 4), 0, 50), _ids(rng, rng.randint(1, 5), 0, 50)
    n = rng.randint(1, 6)
    cols: dict[str, list] = {"uid": [rng.choice(users) for _ in range(n)], "sku": [f"s{rng.choice(items)}" for _ in range(n)]}
    opts: dict[str, Any] = {"user_col": "uid", "item_col": "sku"}
    ts = rng.choice([None, "int", "float", "iso", "format"])
    if ts is not None:
        base = [rng.randint(10**9, 2 * 10**9) for _ in range(n)]
        if ts == "int":
            cols["time"] = base
        elif ts == "float":
            cols["time"] = [b + 0.25 for b in base]
        elif ts == "iso":
            cols["time"] = [f"2020-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 1{rng.randint(0, 9)}:00:00" for _ in base]
        else:
            cols["time"] = [f"1{rng.randint(0, 9)}/0{rng.randint(1, 9)}/2020" for _ in base]
            opts["ts_format"] = "%d/%m/%Y"
        opts["ts_col"] = "time"
    if rng.random() < 0.6:
        cols["stars"] = [rng.choice([1.0, 2.5, 5.0]) for _ in range(n)]
        opts["rating_col"] = "stars"
    cols = dict(rng.sample(list(cols.items()), len(cols)))  # column order does not matter
    item_cols = None
    if rng.random() < 0.5:
        cat = sorted({*cols["sku"], "s99"})
        item_cols = {"pid": cat, "name": [_word(rng) for _ in cat], "tags": [rng.choice(["a|b", "", "c"]) for _ in cat],
                     "cost": [rng.choice([1.5, 3.0]) for _ in cat]}
        opts["item_id_col"] = "pid"
        opts["item_columns"] = {"title": "name", "categories": "tags", "price": "cost"}
    return cols, item_cols, opts


def _fx_csv(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    cols, item_cols, opts = _table_frames(rng)
    sep, ext = rng.choice([(",", "csv"), ("\t", "tsv"), (";", "csv")])
    if sep == ";":
        opts["sep"] = ";"
        if item_cols is not None:
            opts["items_sep"] = ";"

    def rows(c: dict[str, list]) -> list[list[str]]:
        return [list(c), *([str(v) for v in r] for r in zip(*c.values(), strict=True))]

    files = {f"events.{ext}": FileSlot(Delimited(rows(cols), sep, header=True, quote=rng.random() < 0.5), weight=3)}
    if item_cols is not None:
        files[f"items.{ext}"] = FileSlot(Delimited(rows(item_cols), sep, header=True, quote=True))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        items = {"items_path": str(root / f"items.{ext}")} if item_cols is not None else {}
        return load_dataset(str(root / f"events.{ext}"), format="csv" if ext == "csv" else "tsv", **opts, **items)

    return files, load


def _fx_parquet(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    cols, item_cols, opts = _table_frames(rng)
    frame = pl.DataFrame(cols)
    if "time" in cols and not isinstance(cols["time"][0], str) and rng.random() < 0.3:
        frame = frame.with_columns(pl.col("time").cast(pl.Int64, strict=False).cast(pl.Datetime("ms")))
    files = {"events.parquet": FileSlot(Table(frame), weight=3)}
    if item_cols is not None:
        files["items.parquet"] = FileSlot(Table(pl.DataFrame(item_cols)))

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        items = {"items_path": str(root / "items.parquet")} if item_cols is not None else {}
        return load_dataset(str(root / "events.parquet"), format="parquet", **opts, **items)

    return files, load


def _fx_amazon(rng: random.Random) -> tuple[dict[str, FileSlot], Loader]:
    users = [f"A{i}" for i in _ids(rng, rng.randint(1, 4), 0, 20)]
    asins = [f"B{i:03d}" for i in _ids(rng, rng.randint(1, 5), 0, 30)]
    reviews = [{"reviewerID": rng.choice(users), "asin": rng.choice(asins), "overall": rng.choice([5.0, 4, "3", None]),
                "unixReviewTime": rng.choice([rng.randint(10**9, 2 * 10**9), str(rng.randint(10**9, 2 * 10**9))]),
                "reviewText": _word(rng)} for _ in range(rng.randint(1, 6))]
    gz = rng.random() < 0.6
    suffix = ".json.gz" if gz else ".json"
    files = {f"amz/reviews_Toy_5{suffix}": FileSlot(JsonDoc(reviews, lines=True), gz=gz, weight=3)}
    if rng.random() < 0.7:
        meta = [{"asin": a, "title": _word(rng), "price": rng.choice([5.5, "$10.99", "$1 - $2", None]),
                 "brand": _word(rng), "categories": rng.choice([[["Beauty", "Nails"], ["Gifts"]], "A, B", None]),
                 "salesRank": rng.choice([{"Beauty": 12}, {}, None]), "description": rng.choice(["x", ["a", "b"]])}
                for a in [*asins, "B999"]]
        files[f"amz/meta_Toy{suffix}"] = FileSlot(JsonDoc(meta, lines=True, python=rng.random() < 0.5), gz=gz)

    def load(root: Path) -> Any:
        from thinkrec.data import load_dataset

        return load_dataset(str(root / "amz"), format="amazon")

    return files, load


FIXTURES: dict[str, Callable[[random.Random], tuple[dict[str, FileSlot], Loader]]] = {
    "s3rec": _fx_s3rec, "lcrec": _fx_lcrec, "recbole": _fx_recbole, "movielens": _fx_movielens, "mind": _fx_mind,
    "csv": _fx_csv, "parquet": _fx_parquet, "amazon": _fx_amazon,
}


def _n_mutations(rng: random.Random) -> int:
    return rng.choice([0, 1, 1, 1, 2, 2, 3])


def write_loader_case(target: str, rng: random.Random, workdir: str | Path, n_mutations: int | None = None
                      ) -> tuple[Loader, list[str]]:
    """Write one case of ``target`` into ``workdir`` (emptied first): a valid fixture with ``n_mutations``
    (default: 0-3 at random) mutations. Returns the loader to call on ``workdir`` and the mutations' names."""
    workdir = Path(workdir)
    files, load = FIXTURES[target](rng)
    mutations = mutate_files(rng, files, _n_mutations(rng) if n_mutations is None else n_mutations)
    if workdir.exists():
        shutil.rmtree(workdir)
    for name, slot in files.items():
        p = workdir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_dump(slot))
    return load, mutations


def run_loader_case(target: str, rng: random.Random, workdir: str | Path, n_mutations: int | None = None) -> Outcome:
    """One loader case: a valid fixture of ``target``, 0-3 mutations (or ``n_mutations``), loaded from ``workdir``
    (emptied first).

    Returns LOADED (the dataset passes :meth:`Dataset.validate`) or REJECTED (a :class:`DataFormatError` naming a
    file of the case); raises :class:`Unexpected` for an unmutated fixture that does not load or an error naming
    no file of the case, and lets every other exception through."""
    from thinkrec.data import DataFormatError

    workdir = Path(workdir)
    load, mutations = write_loader_case(target, rng, workdir, n_mutations)
    try:
        ds = load(workdir)
    except DataFormatError as exc:
        if not mutations:
            raise Unexpected(f"{target}: the valid fixture was rejected: {exc}") from exc
        where = Path(exc.path).resolve()
        if not where.is_relative_to(workdir.resolve()) or not str(exc).startswith(exc.path):
            raise Unexpected(f"{target}: error names no file of the case: {exc}") from exc
        return Outcome(REJECTED, mutations, str(exc).replace(str(workdir), "<case>"))
    ds.validate()
    return Outcome(LOADED, mutations)


# ---------------------------------------------------------------------------------------------- the API
_REQ_FIELDS = ("user", "history", "k", "exclude_seen", "explain", "retriever", "rerank", "reranker", "as_of")


class ApiFuzzer:
    """Random request bodies against a served funnel, in process (``fastapi.testclient.TestClient``, so the app's
    middleware, validation and micro-batcher all run). Use as a context manager; :meth:`case` runs one case."""

    def __init__(self, funnel: Any, max_k: int | None = None):
        from fastapi.testclient import TestClient

        from thinkrec.serve import BatcherConfig, ServeConfig, create_app

        self.funnel = funnel
        app = create_app(funnel, ServeConfig(batching=BatcherConfig(window_ms=0.0), warmup=False))
        self.service = app.state.service
        self.client = TestClient(app, raise_server_exceptions=False)
        self.users = [str(u) for u in funnel.user_ids]
        self.items = [str(i) for i in funnel.item_ids]
        self._item_set = set(self.items)
        self.max_k = max_k or funnel.max_k()

    def __enter__(self) -> ApiFuzzer:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.__exit__(*exc)

    def _valid_request(self, rng: random.Random, out: list[str]) -> dict[str, Any]:
        """A valid body; with optional fields (which can be refused by design, e.g. ``as_of`` for a user without
        a validation example) it is marked ``options`` in ``out``."""
        body: dict[str, Any] = {}
        if rng.random() < 0.5:
            user = rng.choice(self.users)
            body["user"] = int(user) if user.isdigit() and rng.random() < 0.3 else user
            if rng.random() < 0.2:
                body["as_of"] = rng.choice(["test", "valid"])
                out.append("options")
        else:
            body["history"] = rng.sample(self.items, rng.randint(0, min(6, len(self.items))))
        if rng.random() < 0.7:
            body["k"] = rng.randint(1, min(self.max_k, 12))
        for key, choices in (("exclude_seen", [True, False, None]), ("explain", [True, False]),
                             ("rerank", [True, False]), ("retriever", [None, *self.service.retrievers]),
                             ("reranker", [None, *self.service.rerankers])):
            if rng.random() < 0.2:
                body[key] = rng.choice(choices)
                out.append("options")
        return body

    def _mutate_request(self, rng: random.Random, body: dict[str, Any], out: list[str]) -> None:
        kind = rng.choice(["type", "type", "drop", "unknown", "huge", "nested", "both", "history_junk"])
        key = rng.choice(_REQ_FIELDS)
        if kind == "type":
            body[key] = junk_value(rng)
        elif kind == "drop" and body:
            body.pop(rng.choice(list(body)))
        elif kind == "unknown":
            body[junk_token(rng) or "x"] = junk_value(rng)
        elif kind == "huge":
            body[key] = rng.choice([10**30, -(10**30), 2**63, 1e308, -1e308, 10**4000, 0, -1, self.max_k + 1])
        elif kind == "nested":
            v: Any = junk_value(rng)
            for _ in range(rng.randint(1, 50)):
                v = rng.choice([[v], {"a": v}])
            body[key] = v
        elif kind == "both":
            body["user"], body["history"] = rng.choice(self.users), rng.sample(self.items, 1)
        else:
            hist = body.setdefault("history", [])
            if isinstance(hist, list):
                hist.append(junk_value(rng))
        out.append(f"{kind}:{key}")

    def _body(self, rng: random.Random, out: list[str], n_mutations: int | None
              ) -> tuple[str, bytes, dict[str, str], bool]:
        batch = rng.random() < 0.25
        options: list[str] = []
        reqs = [self._valid_request(rng, options) for _ in range(rng.randint(1, 3) if batch else 1)]
        for _ in range(_n_mutations(rng) if n_mutations is None else n_mutations):
            self._mutate_request(rng, rng.choice(reqs), out)
        payload: Any = {"requests": reqs} if batch else reqs[0]
        if batch and n_mutations != 0 and rng.random() < 0.2:
            payload = rng.choice([{"requests": []}, {"requests": reqs[0]}, reqs, {"requests": reqs, "x": 1},
                                  {"requests": [reqs[0]] * 1001}])
            out.append("batch_shape")
        headers = {"content-type": "application/json"}
        raw = json.dumps(payload, allow_nan=True).encode()
        r = rng.random() if n_mutations != 0 else 1.0
        if r < 0.1:
            raw, what = mutate_bytes(rng, raw)
            out.append(f"bytes:{what}")
        elif r < 0.15:
            raw = rng.choice([b"", b"null", b"[]", b"1", b'"x"', b"{", b"\xff\xfe", ("[" * 100_000).encode(),
                              b'{"k": 1e999999}', b'{"user": "%s"}' % (b"9" * 5000), b"{" + b'"a":{' * 50_000])
            out.append("raw")
        if n_mutations != 0 and rng.random() < 0.1:
            headers["content-type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1",
                                                  "multipart/form-data", "application/problem+json", "application/json\x00"])
            out.append("content-type")
        path = "/v1/recommend/batch" if batch else "/v1/recommend"
        return path, raw, headers, bool(options)

    def case(self, rng: random.Random, n_mutations: int | None = None) -> Outcome:
        """One POST (``n_mutations`` of the body, default 0-3 at random, plus at times bad bytes or a wrong
        content type); raises :class:`Unexpected` for a 5xx, a 4xx without ``error.field``, a malformed 200, or a
        valid body without optional fields that is not served."""
        mutations: list[str] = []
        path, raw, headers, options = self._body(rng, mutations, n_mutations)
        r = self.client.post(path, content=raw, headers={k: v for k, v in headers.items() if v})
        if r.status_code >= 500:
            raise Unexpected(f"{path}: {r.status_code} for {raw[:300]!r} ({mutations}): {r.text[:500]}")
        body = r.json()
        if r.status_code == 200:
            recs = body["results"] if path.endswith("batch") else [body]
            for rec in recs:
                ids = [it.get("item_id") for it in rec.get("items") or []]
                if not ids or len(set(ids)) != len(ids) or not set(ids) <= self._item_set:
                    raise Unexpected(f"{path}: malformed 200 body (no, repeated or unknown items) {r.text[:300]}")
                scores = [it.get("score") for it in rec["items"]]
                if not all(s is None or isinstance(s, int | float) and math.isfinite(s) for s in scores):
                    raise Unexpected(f"{path}: non-finite scores in a 200 body {r.text[:300]}")
            return Outcome("ok", mutations)
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("field"), str) or not err["field"]:
            raise Unexpected(f"{path}: {r.status_code} without a named field for {raw[:300]!r}: {r.text[:300]}")
        if not mutations and not options:
            raise Unexpected(f"{path}: a valid request got {r.status_code}: {r.text[:300]}")
        return Outcome(REJECTED, mutations, f"{r.status_code} {err['field']}")


# ---------------------------------------------------------------------------------------------- --set strings
def config_keys() -> dict[str, Any]:
    """Every dotted name of the run config (sections and leaves: ``sasrec``, ``sasrec.epochs``, ...) with its
    default value."""
    from thinkrec.pipeline.config import RunConfig
    from thinkrec.utils.config import to_dict

    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            out[prefix + k] = v

    walk(to_dict(RunConfig()), "")
    return out


def _near_value(rng: random.Random, default: Any) -> str:
    """A YAML value of the default's type, often valid, sometimes just out of range (``beam=-3``)."""
    if isinstance(default, bool):
        return rng.choice(["true", "false"])
    if isinstance(default, int):
        return str(rng.choice([default, default + 1, max(default // 2, 0), 0, -1, -3, 1, 2**31]))
    if isinstance(default, float):
        return repr(rng.choice([default, default * 2, default / 2, 0.0, -0.5, 1.0, 1.5]))
    if isinstance(default, str):
        return rng.choice([default, default.upper(), default + "x", ""])
    if isinstance(default, list):
        return rng.choice(["[]", json.dumps(default), json.dumps(default[:1]), json.dumps(default * 2)])
    return rng.choice(["null", "{}", "1"])


_YAML_VALUES = [
    "1", "0", "-1", "-3", "2.5", "1e3", "1.0e+3", ".nan", ".inf", "-.inf", "nan", "inf", "1e400", "99999999999999999999",
    "true", "false", "yes", "no", "on", "null", "~", "", " ", "''", '""', "[]", "{}", "[1, 2]", "[a, b]", "{a: 1}",
    "[", "]", "{", "}", ":", "- a", "a: b", "&a 1", "*a", "!!python/object:os.system", "!!binary aGk=", "!!float x",
    "!!int 1.5", "!!set {a}", "!!timestamp x", "2001-12-14", "2001-13-45", "2001-12-14t21:59:43.10-05:00", "0x1F",
    "0o17", "1_000", "+5", "=", "a=b", "'unterminated", '"\\x"', "%TAG", "---", "...", "@x", "`x`", "\t1",
    "[" * 2000 + "]" * 2000, "{a: " * 600 + "1" + "}" * 600, "cpu", "cuda", "mps", "cuda:0", "tiger", "s2gr", "sasrec",
    "popularity", "rqvae", "rqkmeans", "loo", "temporal", "synthetic", "beauty", "nosuch", "é", "\x00", "\x85", "\ud800",
    "[1, .nan]", "[-1]", "{seed: 1}", "2", "8", "0.5", "1.5", "-0.5",
]


def _set_string(rng: random.Random, keys: dict[str, Any], out: list[str]) -> str:
    r = rng.random()
    names = list(keys)
    if r < 0.75:
        key = rng.choice(names)
    elif r < 0.85:
        key = rng.choice(names) + rng.choice([".x", ".", "..", ".0", "[0]"])
    else:
        key = rng.choice(["", ".", "..", " ", "x", "run.", ".run", "a.b.c", "run..seed", junk_token(rng), "=", "__class__",
                          "stages.0", "data.options.a.b"])
    r = rng.random()
    if r < 0.3 and key in keys:
        value = _near_value(rng, keys[key])
    elif r < 0.85:
        value = rng.choice(_YAML_VALUES)
    else:
        value = junk_token(rng)
    s = f"{key}={value}"
    if rng.random() < 0.05:
        s = s.replace("=", rng.choice(["", " = ", "==", ":"]), 1)
    out.append(s)
    return s


def run_set_case(rng: random.Random, keys: dict[str, Any] | None = None) -> Outcome:
    """1-3 random ``key=value`` overrides through :func:`load_run_config` (then ``check_run_config``, the check
    ``thinkrec run`` makes before any work): success (LOADED) or :class:`ConfigError` (REJECTED); anything else
    propagates."""
    from thinkrec.pipeline import config as run_config
    from thinkrec.utils.config import ConfigError

    keys = keys or config_keys()
    sets: list[str] = []
    overrides = [_set_string(rng, keys, sets) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    try:
        cfg = run_config.load_run_config(None, overrides)
        check = getattr(run_config, "check_run_config", None)  # the whole-config check `thinkrec run` makes
        if callable(check):
            check(cfg)
    except ConfigError as exc:
        return Outcome(REJECTED, sets, str(exc)[:200])
    return Outcome(LOADED, sets)
