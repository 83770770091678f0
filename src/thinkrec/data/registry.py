"""Named datasets resolved against a data root (``--data-root``, ``THINKREC_DATA``, default ``../shared/data``),
and path loading with a format hint (``load_dataset("some/folder", format="recbole")``).

Two registries (:class:`thinkrec.utils.registry.Registry`), listed by ``thinkrec models`` and the CLI help:

* :data:`FORMATS`: path formats, each a :class:`Format` (``load(path, **options)``, ``detect(path)``).
* :data:`DATASETS`: named datasets, each a loader ``(data_root, **options) -> Dataset``.

A new path format is one loader module plus one ``FORMATS.register(...)`` call below. Loaders are named as
``"module:function"`` strings and imported on first use, so ``import thinkrec.data`` stays light.

Nothing here downloads: fetch raw files explicitly with :mod:`thinkrec.data.download`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkrec.data.dataset import Dataset
from thinkrec.errors import DataFormatError, MissingInputError, UnknownNameError, UserError
from thinkrec.utils.registry import Registry

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_ROOT",
    "FORMATS",
    "NAMED_DATASETS",
    "Format",
    "detect_format",
    "load_dataset",
    "resolve_data_root",
]

DEFAULT_DATA_ROOT = "../shared/data"

NameTest = Callable[[str], bool]


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    root = data_root or os.environ.get("THINKREC_DATA") or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


# ---------------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    """How to load one path format.

    ``loader`` is a callable or a ``"module:function"`` string imported on first use; it gets the path and the
    caller's options on top of ``defaults``. ``file`` / ``folder`` test names (a file's lower-cased name; the
    names of a folder's entries) for :meth:`detect`; a format without either (an alias) is never auto-detected.
    """

    loader: str | Callable[..., Dataset]
    file: NameTest | None = None
    folder: NameTest | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def load(self, path: Path, **options: Any) -> Dataset:
        fn = self.loader
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = functools.reduce(getattr, attr.split("."), importlib.import_module(module))
        return fn(path, **{**self.defaults, **options})

    def detect(self, path: str | Path) -> bool:
        """Whether ``path`` (a file, or a folder) looks like this format, judged by names only."""
        p = Path(path)
        if p.is_dir():
            return self.folder is not None and any(self.folder(c.name) for c in p.iterdir())
        return self.file is not None and self.file(p.name.lower())


def _ends(*suffixes: str) -> NameTest:
    return lambda name: name.endswith(suffixes)


def _is(*names: str) -> NameTest:
    return lambda name: name in names


def _load_prepared(path: Path, **_: Any) -> Dataset:
    return Dataset.load(path)


def _amazon_reviews(name: str) -> bool:
    return name.startswith("reviews_") and ".json" in name


_LOADERS = "thinkrec.data.loaders"
FORMATS: Registry[Format] = Registry("format")
# Auto-detection tries the formats in registration order: specific names first, loose ones (any *.txt) last.
FORMATS.register(
    "prepared", "a folder written by Dataset.save (meta.json + parquet)",
    Format(_load_prepared, folder=_is("meta.json")),
)
FORMATS.register(
    "movielens",
    "MovieLens folder: ml-100k (u.data or RecBole ml-100k.inter), ml-1m (ratings.dat or ml-1m_sequences.txt), "
    "ml-latest-small / ml-20m / ml-25m (ratings.csv)",
    Format(
        f"{_LOADERS}.movielens:load_movielens",
        folder=_is("u.data", "ml-100k.inter", "ratings.dat", "ml-1m_sequences.txt", "ratings.csv"),
    ),
)
FORMATS.register(
    "mind", "MIND behaviors.tsv (+ news.tsv beside it)",
    Format(f"{_LOADERS}.mind:load_mind", file=_is("behaviors.tsv"), folder=_is("behaviors.tsv")),
)
FORMATS.register(
    "lcrec", "LC-Rec / LETTER / MiniOneRec X.inter.json (+ X.item.json, X.index.json)",
    Format(f"{_LOADERS}.lcrec:load_lcrec_path", file=_ends(".inter.json"), folder=_ends(".inter.json")),
)
FORMATS.register("letter", "alias of lcrec", Format(f"{_LOADERS}.lcrec:load_lcrec_path"))
FORMATS.register(
    "recbole", "RecBole atomic files X.inter (+ X.item)",
    Format(f"{_LOADERS}.recbole:load_recbole", file=_ends(".inter"), folder=_ends(".inter")),
)
FORMATS.register(
    "amazon", "Amazon review dump reviews_X_5.json(.gz) (+ meta_X.json(.gz))",
    Format(f"{_LOADERS}.amazon:load_amazon_path", file=_amazon_reviews, folder=_amazon_reviews),
)
FORMATS.register(
    "table", "CSV / TSV / Parquet interactions with named columns (user_col=, item_col=, ts_col=, ...)",
    Format(f"{_LOADERS}.tabular:load_table", file=_ends(".csv", ".tsv", ".parquet", ".pq")),
)
FORMATS.register("csv", "alias of table", Format(f"{_LOADERS}.tabular:load_table"))
FORMATS.register(
    "tsv", "table, tab-separated by default", Format(f"{_LOADERS}.tabular:load_table", defaults={"sep": "\t"})
)
FORMATS.register("parquet", "alias of table", Format(f"{_LOADERS}.tabular:load_table"))
FORMATS.register(
    "s3rec", "S3-Rec <Name>.txt sequences (+ <Name>.items.jsonl or datamaps.json, <Name>_item2attributes.json)",
    Format(
        f"{_LOADERS}.s3rec:load_s3rec_path",
        file=_ends(".txt"),
        folder=lambda name: name.endswith(".txt") and name != "readme.txt",
    ),
)


def detect_format(path: str | Path) -> str:
    """Guess the format of a file or folder from its names (raises ValueError when nothing matches)."""
    p = Path(path)
    for entry in FORMATS.entries():
        if entry.obj.detect(p):
            return entry.name
    raise DataFormatError(p, f"cannot tell the dataset format; pass format= one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------- named datasets
def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: dataset file not found (set --data-root or THINKREC_DATA to the folder holding the datasets)"
        )
    return path


def _first_dir(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    """The first existing candidate folder; the error lists every place that was looked at."""
    for cand in candidates:
        if (root / cand).is_dir():
            return root / cand
    tried = ", ".join(str(root / c) for c in candidates)
    raise FileNotFoundError(
        f"{what} not found (looked in {tried}); set --data-root or THINKREC_DATA, "
        "or fetch it with thinkrec.data.download"
    )


def _s3rec(folder: str, stem: str, name: str) -> Callable[..., Dataset]:
    """An S3-Rec folder of the shared data: ``<stem>.txt`` and the metadata files beside it."""

    def load(root: Path, **_: Any) -> Dataset:
        from thinkrec.data.loaders.s3rec import load_s3rec_path

        return load_s3rec_path(_need(root / folder / f"{stem}.txt"), name=name)

    return load


def _beauty_letter(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.lcrec import load_lcrec

    # LETTER's files: same users/items as `beauty` with ids - 1, plus LETTER's own semantic IDs (column `sid`).
    d = root / "amazon_beauty_2014"
    items = d / "Beauty.items.jsonl"
    index = d / "Beauty.index.json"
    return load_lcrec(
        _need(d / "Beauty.inter.json"),
        items if items.exists() else None,
        index if index.exists() else None,
        name="beauty-letter",
        jsonl_id_field="letter_id",
    )


def _movielens(which: str) -> Callable[..., Dataset]:
    def load(root: Path, keep_all_items: bool = False, **_: Any) -> Dataset:
        from thinkrec.data.loaders import movielens

        folder = _first_dir(root, (f"movielens/{which}", which), f"MovieLens {which}")
        if which == "ml-100k":
            return movielens.load_ml100k(folder, which, keep_all_items)
        if which == "ml-1m":
            return movielens.load_ml1m(folder, which, keep_all_items)
        return movielens.load_movielens_csv(folder, which, keep_all_items)

    return load


def _mind(root: Path, keep_all_items: bool = False, **_: Any) -> Dataset:
    from thinkrec.data.loaders.mind import load_mind

    folder = _first_dir(root, ("mind_small_subset", "MINDsmall_train", "mind"), "MIND behaviors")
    return load_mind(_need(folder / "behaviors.tsv"), name="mind", keep_all_items=keep_all_items)


def _synthetic(root: Path, **kwargs: Any) -> Dataset:
    from thinkrec.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(**kwargs))


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
DATASETS.register(
    "synthetic", "built-in synthetic shop with a known click model (options: SyntheticConfig fields)", _synthetic
)
DATASETS.register(
    "beauty", "Amazon Beauty 2014: S3-Rec sequences + item text (<root>/amazon_beauty_2014)",
    _s3rec("amazon_beauty_2014", "Beauty", "beauty"),
)
DATASETS.register(
    "beauty-letter", "Amazon Beauty 2014 in LETTER's files, with LETTER's semantic IDs (column sid)",
    _beauty_letter,
)
DATASETS.register(
    "sports", "Amazon Sports and Outdoors 2014: S3-Rec sequences + attribute ids (<root>/amazon_sports_2014)",
    _s3rec("amazon_sports_2014", "Sports_and_Outdoors", "sports"),
)
DATASETS.register(
    "yelp", "Yelp: S3-Rec sequences + business text (<root>/yelp_s3rec_p5)", _s3rec("yelp_s3rec_p5", "Yelp", "yelp")
)
for _which in ("ml-100k", "ml-1m", "ml-latest-small"):
    DATASETS.register(
        _which, f"MovieLens {_which} (<root>/movielens/{_which} or <root>/{_which})", _movielens(_which)
    )
del _which
DATASETS.register(
    "mind", "MIND small: impressions with clicks + news text (<root>/mind_small_subset, MINDsmall_train or mind)",
    _mind,
)

NAMED_DATASETS = DATASETS  # the former name


def load_dataset(
    name: str | Path, data_root: str | Path | None = None, format: str | None = None, **options: Any
) -> Dataset:
    """Load a dataset by name, by prepared folder (one with ``meta.json``), or by path with a ``format`` hint.

    Resolution: with ``format``, ``name`` is a path (absolute, relative to the cwd, or relative to the data root)
    loaded by that format's loader; otherwise a prepared folder, then a named dataset, then an existing path
    whose format is detected. ``options`` go to the loader (e.g. ``user_col=`` for ``format="csv"``,
    ``keep_all_items=True`` for MovieLens/MIND, generator settings for ``synthetic``).

    A name that resolves to nothing raises :class:`~thinkrec.errors.UnknownNameError`; a file the loader needs
    and cannot find, :class:`~thinkrec.errors.MissingInputError` (both user errors, and a ``KeyError`` /
    ``FileNotFoundError`` as before).
    """
    try:
        return _load_dataset(name, data_root, format, **options)
    except FileNotFoundError as exc:
        if isinstance(exc, UserError):
            raise
        raise MissingInputError(str(exc)) from exc


def _load_dataset(name: str | Path, data_root: str | Path | None, format: str | None, **options: Any) -> Dataset:
    as_path = Path(name)
    if format is not None:
        fmt = FORMATS.get(format)
        if (
            not as_path.exists()
            and not as_path.is_absolute()
            and (resolve_data_root(data_root) / as_path).exists()
        ):
            as_path = resolve_data_root(data_root) / as_path
        if not as_path.exists():
            raise FileNotFoundError(f"{as_path}: no such file or folder to load as {format!r}")
        return fmt.load(as_path, **options)
    if (as_path / "meta.json").exists():
        return Dataset.load(as_path)
    if isinstance(name, str) and name in DATASETS:
        return DATASETS.get(name)(resolve_data_root(data_root), **options)
    if as_path.exists():
        return FORMATS.get(detect_format(as_path)).load(as_path, **options)
    raise UnknownNameError(
        f"unknown dataset {str(name)!r}; known: {', '.join(sorted(DATASETS))}, "
        "a prepared folder, or a path (with format= one of " + ", ".join(FORMATS) + ")"
    )
