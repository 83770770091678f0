"""Downloaders against a local HTTP server: fetch, checksum, atomic placement, unzip and load."""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.error
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from thinkrec.data import load_dataset
from thinkrec.data.download import (
    AMAZON2014_ENV,
    MOVIELENS_ENV,
    ChecksumError,
    download_amazon2014,
    download_file,
    download_movielens,
    extract_zip,
    load_amazon2014,
)
from thinkrec.data.loaders.movielens import load_ml100k

from .conftest import AMAZON_META, AMAZON_REVIEWS, ML100K_DATA, ML100K_GENRE, ML100K_ITEM, write_gz


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/truncated.bin"):
            # Announce more bytes than are sent, then close: a dropped connection.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (random port) serving ``tmp_path/www``; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _ml100k_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", ML100K_DATA)
        zf.writestr("ml-100k/u.item", ML100K_ITEM.encode("latin-1"))
        zf.writestr("ml-100k/u.genre", ML100K_GENRE)
    return path


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


def test_download_file_atomic_and_checksums(served: tuple[str, Path], tmp_path: Path) -> None:
    base, www = served
    payload = b"hello world\n" * 100
    (www / "f.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    md5 = hashlib.md5(payload).hexdigest()
    out = tmp_path / "dl"
    got = download_file(base + "f.bin", out / "f.bin", checksum=f"sha256:{sha}")
    assert got.read_bytes() == payload
    assert download_file(base + "f.bin", out / "g.bin", checksum=md5).read_bytes() == payload  # bare md5 hex

    with pytest.raises(ChecksumError, match="mismatch"):
        download_file(base + "f.bin", out / "bad.bin", checksum="sha256:" + "0" * 64)
    assert not (out / "bad.bin").exists()
    assert _no_temp_files(out)

    # An existing file with a wrong checksum is replaced only through a verified download.
    (out / "f.bin").write_bytes(b"stale")
    assert download_file(base + "f.bin", out / "f.bin", checksum=sha).read_bytes() == payload
    with pytest.raises(ValueError, match="unsupported checksum"):
        download_file(base + "f.bin", out / "h.bin", checksum="crc:zz")


def test_download_failures_leave_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    out = tmp_path / "dl"
    with pytest.raises(urllib.error.HTTPError):
        download_file(base + "missing.zip", out / "missing.zip")
    with pytest.raises(OSError, match="incomplete download"):
        download_file(base + "truncated.bin", out / "truncated.bin")
    assert not (out / "missing.zip").exists() and not (out / "truncated.bin").exists()
    assert _no_temp_files(out)


def test_download_movielens_extract_and_load(served: tuple[str, Path], tmp_path: Path) -> None:
    base, www = served
    archive = _ml100k_zip(www / "ml-100k.zip")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "data" / "movielens"
    folder = download_movielens("ml-100k", root, base_url=base, checksum=f"sha256:{sha}", keep_zip=False)
    assert folder == root / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["u.data", "u.genre", "u.item"]
    assert not (root / "ml-100k.zip").exists()
    assert _no_temp_files(root)
    ds = load_ml100k(folder)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 3, 4)
    assert ds.items["title"][1] == "Café Society (1997)"
    # and through the registry, with the data root holding the downloaded folder
    assert load_dataset("ml-100k", data_root=tmp_path / "data").n_interactions == 4


def test_download_movielens_checksum_mismatch_and_env(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, www = served
    _ml100k_zip(www / "ml-100k.zip")
    root = tmp_path / "ml"
    with pytest.raises(ChecksumError):
        download_movielens("ml-100k", root, base_url=base, checksum="md5:" + "f" * 32)
    assert not root.exists() or (not (root / "ml-100k.zip").exists() and not (root / "ml-100k").exists())
    monkeypatch.setenv(MOVIELENS_ENV, base.rstrip("/"))  # env override, missing slash tolerated
    assert (download_movielens("ml-100k", root) / "u.data").exists()
    with pytest.raises(ValueError, match="unknown MovieLens"):
        download_movielens("ml-7b", root)


def test_extract_zip_refuses_escape(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escaped.txt", "bad")
    with pytest.raises(ValueError, match="refusing"):
        extract_zip(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / "ok.txt").exists()  # checked before anything is written


def test_download_amazon_and_load(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    base, www = served
    reviews = write_gz(www / "reviews_Toy_5.json.gz", [json.dumps(r) for r in AMAZON_REVIEWS])
    write_gz(www / "meta_Toy.json.gz", AMAZON_META)
    root = tmp_path / "amazon"
    sha = hashlib.sha256(reviews.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError):
        download_amazon2014("Toy", root, base_url=base, checksums={"meta": "sha256:" + "1" * 64})
    assert not (root / "meta_Toy.json.gz").exists()
    assert _no_temp_files(root)
    monkeypatch.setenv(AMAZON2014_ENV, base)
    files = download_amazon2014("Toy", root, checksums={"reviews_Toy_5.json.gz": sha})
    assert set(files) == {"reviews", "meta"} and all(p.exists() for p in files.values())
    ds = load_amazon2014("Toy", root)
    assert ds.name == "toy"
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 3, 4)
    assert ds.items["title"][1] == "Nail Polish 'Red'"
    assert load_dataset(str(root)).n_interactions == 4  # format detected from the file names
    with pytest.raises(FileNotFoundError, match="download_amazon2014"):
        load_amazon2014("Other", root)
    with pytest.raises(ValueError, match="invalid Amazon category"):
        download_amazon2014("../etc", root)
