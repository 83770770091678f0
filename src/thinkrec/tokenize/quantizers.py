"""Quantizer registry: ``build_quantizer(method, config)`` and ``load_quantizer(path)``.

:data:`QUANTIZERS` holds one :class:`QuantizerSpec` per method (``thinkrec models`` lists them); aliases are
part of each spec:

* ``rqkmeans`` [``rq-kmeans``, ``rq_kmeans``] → :class:`RQKMeans` / :class:`RQKMeansConfig`
* ``rqkmeans_balanced`` [``balanced_rqkmeans``, ``rq-kmeans-balanced``, ``rq_kmeans_balanced``] → the same
  with ``balanced=True``
* ``rqvae`` [``rq-vae``, ``rq_vae``, ``tiger``] → :class:`RQVAE` / :class:`RQVAEConfig`
* ``coba`` [``coba-rqvae``, ``coba_rqvae``, ``s2gr``] → :class:`CoBa` / :class:`CoBaConfig`

``config`` is a mapping (validated with :func:`thinkrec.utils.config.from_dict`: unknown keys and wrong types
raise :class:`~thinkrec.utils.config.ConfigError` naming the field), a config dataclass, or ``None`` (defaults).

A saved quantizer records its class's ``name`` (``rqkmeans``, ``rqvae``, ``coba``; a balanced RQ-KMeans is an
``rqkmeans`` with ``balanced: true`` in its config), which is also a registry name: :func:`load_quantizer`
dispatches on it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkrec.tokenize.base import CONFIG_FILE, Quantizer
from thinkrec.tokenize.coba import CoBa, CoBaConfig
from thinkrec.tokenize.rqkmeans import RQKMeans, RQKMeansConfig
from thinkrec.tokenize.rqvae import RQVAE, RQVAEConfig
from thinkrec.utils.config import ConfigError, from_dict
from thinkrec.utils.registry import Registry


@dataclass(frozen=True)
class QuantizerSpec:
    """How to build one method's quantizer from a config, and load a saved one from a folder."""

    cls: type[Quantizer]
    config_cls: type
    preset: dict[str, Any] = field(default_factory=dict)  # config values the method fixes (under the user's)
    aliases: tuple[str, ...] = ()

    def config(self, config: dict[str, Any] | Any | None = None, where: str = "") -> Any:
        """The validated config dataclass (``preset``, then ``config`` on top)."""
        where = where or self.cls.name
        if config is None:
            data: dict[str, Any] = {}
        elif dataclasses.is_dataclass(config) and not isinstance(config, type):
            if not isinstance(config, self.config_cls):
                raise ConfigError(f"{where}: expected a {self.config_cls.__name__}, got {type(config).__name__}")
            return config
        elif isinstance(config, dict):
            data = dict(config)
        else:
            raise ConfigError(f"{where}: config must be a mapping or a {self.config_cls.__name__}")
        try:
            return from_dict(self.config_cls, {**self.preset, **data}, where=where)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None

    def build(self, config: dict[str, Any] | Any | None = None, where: str = "") -> Quantizer:
        """An unfitted quantizer configured by ``config``."""
        return self.cls(self.config(config, where))

    def load(self, path: str | Path) -> Quantizer:
        return self.cls.load(path)


QUANTIZERS: Registry[QuantizerSpec] = Registry("quantizer")
QUANTIZERS.register(
    "rqkmeans", "RQ-KMeans: residual k-means codebooks (faiss)",
    QuantizerSpec(RQKMeans, RQKMeansConfig, aliases=("rq-kmeans", "rq_kmeans")),
)
QUANTIZERS.register(
    "rqkmeans_balanced", "RQ-KMeans with capacity-constrained assignment per level (flat code usage)",
    QuantizerSpec(RQKMeans, RQKMeansConfig, {"balanced": True},
                  aliases=("balanced_rqkmeans", "rq-kmeans-balanced", "rq_kmeans_balanced")),
)
QUANTIZERS.register(
    "rqvae", "RQ-VAE (TIGER): MLP autoencoder with residual codebooks and collapse switches (torch)",
    QuantizerSpec(RQVAE, RQVAEConfig, aliases=("rq-vae", "rq_vae", "tiger")),
)
QUANTIZERS.register(
    "coba", "CoBa RQ-VAE (S²GR): collaborative input alignment, codeword uniformity, usage-balanced assignment",
    QuantizerSpec(CoBa, CoBaConfig, aliases=("coba-rqvae", "coba_rqvae", "s2gr")),
)


def canonical_method(method: str) -> str:
    """The registry name of ``method`` (case-insensitive, aliases resolved); ConfigError if unknown."""
    names = {alias: e.name for e in QUANTIZERS.entries() for alias in (e.name, *e.obj.aliases)}
    key = method.strip().lower()
    if key not in names:
        aliases = ", ".join(a for e in QUANTIZERS.entries() for a in e.obj.aliases)
        raise ConfigError(f"unknown quantizer {method!r}; known: {', '.join(QUANTIZERS.names())} (aliases: {aliases})")
    return names[key]


def spec(method: str) -> QuantizerSpec:
    return QUANTIZERS.get(canonical_method(method))


def config_class(method: str) -> type:
    return spec(method).config_cls


def make_config(method: str, config: dict[str, Any] | Any | None = None) -> Any:
    """The validated config dataclass for ``method`` (method presets, then ``config`` on top)."""
    return spec(method).config(config, where=canonical_method(method))


def build_quantizer(method: str, config: dict[str, Any] | Any | None = None) -> Quantizer:
    """An unfitted quantizer of ``method`` configured by ``config``."""
    return spec(method).build(config, where=canonical_method(method))


def load_quantizer(path: str | Path) -> Quantizer:
    """Load any saved quantizer (dispatch on the ``method`` recorded in its ``config.json``)."""
    cfg_file = Path(path) / CONFIG_FILE
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a saved quantizer)")
    method = json.loads(cfg_file.read_text()).get("method")
    return QUANTIZERS.get(str(method), where=f"{path}: saved method").load(path)


__all__ = [
    "QUANTIZERS",
    "CoBa",
    "CoBaConfig",
    "QuantizerSpec",
    "RQKMeans",
    "RQKMeansConfig",
    "RQVAE",
    "RQVAEConfig",
    "build_quantizer",
    "canonical_method",
    "config_class",
    "load_quantizer",
    "make_config",
]
