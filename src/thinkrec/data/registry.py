"""Named datasets resolved against a data root (``--data-root``, ``THINKREC_DATA``, default ``../shared/data``)."""

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


def _beauty(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.s3rec import load_s3rec

    d = root / "amazon_beauty_2014"
    return load_s3rec(_need(d / "Beauty.txt"), d / "Beauty.items.jsonl", d / "datamaps.json", name="beauty")


def _sports(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.s3rec import load_s3rec

    d = root / "amazon_sports_2014"
    return load_s3rec(_need(d / "Sports_and_Outdoors.txt"), None, d / "datamaps.json", name="sports")


def _yelp(root: Path, **_: Any) -> Dataset:
    from thinkrec.data.loaders.s3rec import load_s3rec

    d = root / "yelp_s3rec_p5"
    return load_s3rec(_need(d / "Yelp.txt"), d / "Yelp.items.jsonl", d / "datamaps.json", name="yelp")


def _synthetic(root: Path, **kwargs: Any) -> Dataset:
    from thinkrec.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(**kwargs))


NAMED_DATASETS: dict[str, Callable[..., Dataset]] = {
    "synthetic": _synthetic,
    "beauty": _beauty,
    "sports": _sports,
    "yelp": _yelp,
}


def load_dataset(name: str, data_root: str | Path | None = None, **options: Any) -> Dataset:
    """Load a named dataset, or a prepared dataset folder (one with ``meta.json``)."""
    as_path = Path(name)
    if (as_path / "meta.json").exists():
        return Dataset.load(as_path)
    if name not in NAMED_DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(NAMED_DATASETS))} or a prepared folder")
    return NAMED_DATASETS[name](resolve_data_root(data_root), **options)
