"""Named datasets resolved against a data root (``--data-root``, ``THINKREC_DATA``, default ``../shared/data``),
and path loading with a format hint (``load_dataset("some/folder", format="recbole")``).

Nothing here downloads: fetch raw files explicitly with :mod:`thinkrec.data.download`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thinkrec.data.dataset import Dataset

DEFAULT_DATA_ROOT = "../shared/data"


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    root = data_root or os.environ.get("THINKREC_DATA") or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


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


# ---------------------------------------------------------------------------------------------- named datasets
def _beauty(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.s3rec import load_s3rec

    d = root / "amazon_beauty_2014"
    return load_s3rec(_need(d / "Beauty.txt"), d / "Beauty.items.jsonl", d / "datamaps.json", name="beauty")


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


def _sports(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.s3rec import load_s3rec

    d = root / "amazon_sports_2014"
    return load_s3rec(_need(d / "Sports_and_Outdoors.txt"), None, d / "datamaps.json", name="sports",
                      attributes=d / "Sports_and_Outdoors_item2attributes.json")


def _yelp(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.s3rec import load_s3rec

    d = root / "yelp_s3rec_p5"
    return load_s3rec(_need(d / "Yelp.txt"), d / "Yelp.items.jsonl", d / "datamaps.json", name="yelp")


def _movielens(which: str) -> Callable[..., Dataset]:
    def load(root: Path, keep_all_items: bool = False, **_: Any) -> Dataset:
        from thinkrec.data.loaders import movielens

        folder = _first_dir(root, (f"movielens/{which}", which), f"MovieLens {which}")
        if which == "ml-100k":
            return movielens.load_ml100k(folder, which, keep_all_items)
        if which == "ml-1m":
            return movielens.load_ml1m(folder, which, keep_all_items)
        return movielens.load_movielens_csv(folder, which, keep_all_items)

    load.__doc__ = f"MovieLens {which} from <root>/movielens/{which} or <root>/{which}."
    return load


def _mind(root: Path, keep_all_items: bool = False, **_: Any) -> Dataset:
    from thinkrec.data.loaders.mind import load_mind

    folder = _first_dir(root, ("mind_small_subset", "MINDsmall_train", "mind"), "MIND behaviors")
    return load_mind(_need(folder / "behaviors.tsv"), name="mind", keep_all_items=keep_all_items)


def _synthetic(root: Path, **kwargs: Any) -> Dataset:
    from thinkrec.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(**kwargs))


NAMED_DATASETS: dict[str, Callable[..., Dataset]] = {
    "synthetic": _synthetic,
    "beauty": _beauty,
    "beauty-letter": _beauty_letter,
    "sports": _sports,
    "yelp": _yelp,
    "ml-100k": _movielens("ml-100k"),
    "ml-1m": _movielens("ml-1m"),
    "ml-latest-small": _movielens("ml-latest-small"),
    "mind": _mind,
}


# ---------------------------------------------------------------------------------------------- formats
def _load_format(fmt: str, path: Path, options: dict[str, Any]) -> Dataset:
    from thinkrec.data.loaders import amazon, lcrec, mind, movielens, recbole, s3rec, tabular

    loaders: dict[str, Callable[..., Dataset]] = {
        "prepared": lambda p, **_: Dataset.load(p),
        "s3rec": s3rec.load_s3rec_path,
        "lcrec": lcrec.load_lcrec_path,
        "recbole": recbole.load_recbole,
        "movielens": movielens.load_movielens,
        "mind": mind.load_mind,
        "table": tabular.load_table,
        "amazon": amazon.load_amazon_path,
    }
    return loaders[fmt](path, **options)


FORMATS = (
    "prepared",
    "s3rec",
    "lcrec",
    "letter",
    "recbole",
    "movielens",
    "mind",
    "csv",
    "tsv",
    "parquet",
    "table",
    "amazon",
)
_ALIASES = {"letter": "lcrec", "csv": "table", "tsv": "table", "parquet": "table"}


def detect_format(path: str | Path) -> str:
    """Guess the format of a file or folder from its names (raises ValueError when nothing matches)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        names = {c.name for c in p.iterdir()}
        if "meta.json" in names:
            return "prepared"
        if names & {"u.data", "ml-100k.inter", "ratings.dat", "ml-1m_sequences.txt", "ratings.csv"}:
            return "movielens"
        if "behaviors.tsv" in names:
            return "mind"
        if any(n.endswith(".inter.json") for n in names):
            return "lcrec"
        if any(n.endswith(".inter") for n in names):
            return "recbole"
        if any(n.startswith("reviews_") and ".json" in n for n in names):
            return "amazon"
        if any(n.endswith(".txt") and n not in ("readme.txt",) for n in names):
            return "s3rec"
    elif name.endswith(".inter.json"):
        return "lcrec"
    elif name.endswith(".inter"):
        return "recbole"
    elif name == "behaviors.tsv":
        return "mind"
    elif name.startswith("reviews_") and ".json" in name:
        return "amazon"
    elif name.endswith((".csv", ".tsv", ".parquet", ".pq")):
        return "table"
    elif name.endswith(".txt"):
        return "s3rec"
    raise ValueError(f"{p}: cannot tell the dataset format; pass format= one of {', '.join(FORMATS)}")


def load_dataset(
    name: str | Path, data_root: str | Path | None = None, format: str | None = None, **options: Any
) -> Dataset:
    """Load a dataset by name, by prepared folder (one with ``meta.json``), or by path with a ``format`` hint.

    Resolution: with ``format``, ``name`` is a path (absolute, relative to the cwd, or relative to the data root)
    loaded by that format's loader; otherwise a prepared folder, then a named dataset, then an existing path
    whose format is detected. ``options`` go to the loader (e.g. ``user_col=`` for ``format="csv"``,
    ``keep_all_items=True`` for MovieLens/MIND, generator settings for ``synthetic``).
    """
    as_path = Path(name)
    if format is not None:
        fmt = _ALIASES.get(format, format)
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        if (
            not as_path.exists()
            and not as_path.is_absolute()
            and (resolve_data_root(data_root) / as_path).exists()
        ):
            as_path = resolve_data_root(data_root) / as_path
        if not as_path.exists():
            raise FileNotFoundError(f"{as_path}: no such file or folder to load as {format!r}")
        if format == "tsv":
            options.setdefault("sep", "\t")
        return _load_format(fmt, as_path, options)
    if (as_path / "meta.json").exists():
        return Dataset.load(as_path)
    if isinstance(name, str) and name in NAMED_DATASETS:
        return NAMED_DATASETS[name](resolve_data_root(data_root), **options)
    if as_path.exists():
        return _load_format(detect_format(as_path), as_path, options)
    raise KeyError(
        f"unknown dataset {str(name)!r}; known: {', '.join(sorted(NAMED_DATASETS))}, "
        "a prepared folder, or a path (with format= one of " + ", ".join(FORMATS) + ")"
    )
