"""Explicit, on-request downloads of public datasets (never called at import or by the default loaders).

* MovieLens zips from GroupLens (``ml-100k``, ``ml-1m``, ``ml-latest-small``, ``ml-20m``, ``ml-25m``).
* Amazon 2014 review files (``reviews_<Category>_5.json.gz``, ``meta_<Category>.json.gz``) from the McAuley lab.

Base URLs can be overridden by argument or by ``THINKREC_MOVIELENS_URL`` / ``THINKREC_AMAZON2014_URL`` (mirrors,
local servers in tests). Every file is streamed to a temporary sibling, checked against an optional checksum
and only then renamed into place, so an interrupted or corrupt download never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from thinkrec.data.dataset import Dataset

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/"
AMAZON2014_URL = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
MOVIELENS_ENV = "THINKREC_MOVIELENS_URL"
AMAZON2014_ENV = "THINKREC_AMAZON2014_URL"
MOVIELENS_DATASETS = ("ml-100k", "ml-1m", "ml-latest-small", "ml-20m", "ml-25m")
_CHUNK = 1 << 20


class ChecksumError(OSError):
    """A downloaded file does not match its expected checksum (the file was discarded)."""


def _base_url(explicit: str | None, env: str, default: str) -> str:
    url = explicit or os.environ.get(env) or default
    return url if url.endswith("/") else url + "/"


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:abc…"`` / ``"md5:abc…"`` or a bare hex digest (length picks md5/sha1/sha256)."""
    algo, sep, digest = checksum.strip().partition(":")
    if not sep:
        digest = algo
        algo = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}.get(len(digest), "")
    algo = algo.lower()
    if algo not in hashlib.algorithms_guaranteed or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise ValueError(f"unsupported checksum {checksum!r}; use 'sha256:<hex>' or 'md5:<hex>'")
    return algo, digest.lower()


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    url: str, dest: str | Path, checksum: str | None = None, overwrite: bool = False, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest`` atomically; verify ``checksum`` if given. An existing ``dest`` is kept when it
    matches the checksum (or no checksum is given) unless ``overwrite``."""
    dest = Path(dest)
    algo_digest = _parse_checksum(checksum) if checksum else None
    if (
        dest.exists()
        and not overwrite
        and (algo_digest is None or file_digest(dest, algo_digest[0]) == algo_digest[1])
    ):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.new(algo_digest[0]) if algo_digest else None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            size = 0
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                size += len(chunk)
                if h is not None:
                    h.update(chunk)
        # http.client returns a short body silently when the connection drops; compare with the announced size.
        if expected is not None and expected.isdigit() and size != int(expected):
            raise OSError(f"{url}: incomplete download ({size} of {expected} bytes); file discarded")
        if algo_digest is not None and h is not None and h.hexdigest() != algo_digest[1]:
            raise ChecksumError(
                f"{url}: {algo_digest[0]} mismatch (expected {algo_digest[1]}, got {h.hexdigest()}); file discarded"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return dest


def extract_zip(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract ``archive`` under ``dest``; each file is written to a temporary folder first and renamed into place.

    Members that would escape ``dest`` (absolute paths, ``..``) are refused (zip-slip).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for m in members:
            target = (root / m.filename).resolve()
            if root not in target.parents:
                raise ValueError(f"{archive}: refusing to extract {m.filename!r} outside {dest}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=dest))
        try:
            zf.extractall(tmp, members)
            for m in members:
                target = dest / m.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / m.filename, target)
                written.append(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return written


def download_movielens(
    name: str,
    root: str | Path,
    base_url: str | None = None,
    checksum: str | None = None,
    keep_zip: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download and unzip MovieLens ``name`` under ``root``; returns ``root/name`` (the zip's top folder)."""
    if name not in MOVIELENS_DATASETS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(MOVIELENS_DATASETS)}")
    root = Path(root)
    url = _base_url(base_url, MOVIELENS_ENV, MOVIELENS_URL) + f"{name}.zip"
    archive = download_file(url, root / f"{name}.zip", checksum=checksum, timeout=timeout)
    extract_zip(archive, root)
    if not keep_zip:
        archive.unlink()
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{archive}: the archive has no top-level '{name}/' folder")
    return folder


def amazon2014_files(category: str) -> dict[str, str]:
    """File names of a 2014 category, e.g. ``Beauty`` -> reviews_Beauty_5.json.gz, meta_Beauty.json.gz."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", category):
        raise ValueError(
            f"invalid Amazon category {category!r} (use the file-name form, e.g. 'Sports_and_Outdoors')"
        )
    return {"reviews": f"reviews_{category}_5.json.gz", "meta": f"meta_{category}.json.gz"}


def download_amazon2014(
    category: str,
    root: str | Path,
    base_url: str | None = None,
    reviews: bool = True,
    meta: bool = True,
    checksums: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Download the 2014 5-core reviews and/or meta file of ``category`` into ``root``.

    ``checksums`` maps ``"reviews"``/``"meta"`` (or the file name) to a checksum. Returns ``{"reviews": path, ...}``.
    """
    names = amazon2014_files(category)
    base = _base_url(base_url, AMAZON2014_ENV, AMAZON2014_URL)
    checksums = checksums or {}
    out: dict[str, Path] = {}
    for kind, wanted in (("reviews", reviews), ("meta", meta)):
        if not wanted:
            continue
        fname = names[kind]
        out[kind] = download_file(
            base + fname,
            Path(root) / fname,
            checksum=checksums.get(kind) or checksums.get(fname),
            timeout=timeout,
        )
    return out


def load_amazon2014(
    category: str,
    root: str | Path,
    download: bool = False,
    base_url: str | None = None,
    name: str | None = None,
    keep_all_items: bool = False,
) -> Dataset:
    """Load ``reviews_<category>_5.json.gz`` (+ meta when present) from ``root``; fetch them first if ``download``."""
    from thinkrec.data.loaders.amazon import load_amazon_reviews

    names = amazon2014_files(category)
    if download:
        download_amazon2014(category, root, base_url=base_url)
    reviews = Path(root) / names["reviews"]
    if not reviews.exists():
        raise FileNotFoundError(
            f"{reviews}: Amazon reviews file not found (call download_amazon2014({category!r}, {str(root)!r}) first)"
        )
    meta = Path(root) / names["meta"]
    return load_amazon_reviews(
        reviews, meta if meta.exists() else None, name=name or category.lower(), keep_all_items=keep_all_items
    )
