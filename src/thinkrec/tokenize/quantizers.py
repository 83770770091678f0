"""Quantizer registry: ``build_quantizer(method, config)`` and ``load_quantizer(path)``.

Methods (aliases in brackets):

* ``rqkmeans`` [``rq-kmeans``, ``rq_kmeans``] → :class:`RQKMeans` / :class:`RQKMeansConfig`
* ``rqkmeans_balanced`` [``balanced_rqkmeans``, ``rq-kmeans-balanced``] → the same with ``balanced=True``
* ``rqvae`` [``rq-vae``, ``rq_vae``, ``tiger``] → :class:`RQVAE` / :class:`RQVAEConfig`
* ``coba`` [``coba-rqvae``, ``coba_rqvae``, ``s2gr``] → :class:`CoBa` / :class:`CoBaConfig`

``config`` is a mapping (validated with :func:`thinkrec.utils.config.from_dict`: unknown keys and wrong types
raise :class:`~thinkrec.utils.config.ConfigError` naming the field), a config dataclass, or ``None`` (defaults).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from thinkrec.tokenize.base import Quantizer
from thinkrec.tokenize.coba import CoBa, CoBaConfig
from thinkrec.tokenize.rqkmeans import CONFIG_FILE, RQKMeans, RQKMeansConfig
from thinkrec.tokenize.rqvae import RQVAE, RQVAEConfig
from thinkrec.utils.config import ConfigError, from_dict

QUANTIZERS: dict[str, tuple[type[Quantizer], type, dict[str, Any]]] = {
    "rqkmeans": (RQKMeans, RQKMeansConfig, {}),
    "rqkmeans_balanced": (RQKMeans, RQKMeansConfig, {"balanced": True}),
    "rqvae": (RQVAE, RQVAEConfig, {}),
    "coba": (CoBa, CoBaConfig, {}),
}
ALIASES = {
    "rq-kmeans": "rqkmeans",
    "rq_kmeans": "rqkmeans",
    "balanced_rqkmeans": "rqkmeans_balanced",
    "rq-kmeans-balanced": "rqkmeans_balanced",
    "rq_kmeans_balanced": "rqkmeans_balanced",
    "rq-vae": "rqvae",
    "rq_vae": "rqvae",
    "tiger": "rqvae",
    "coba-rqvae": "coba",
    "coba_rqvae": "coba",
    "s2gr": "coba",
}
# saved artifacts record the class name (RQKMeans.name etc.)
_BY_SAVED_NAME: dict[str, type[Quantizer]] = {"rqkmeans": RQKMeans, "rqvae": RQVAE, "coba": CoBa}


def canonical_method(method: str) -> str:
    key = method.strip().lower()
    key = ALIASES.get(key, key)
    if key not in QUANTIZERS:
        known = ", ".join(sorted({*QUANTIZERS, *ALIASES}))
        raise ConfigError(f"unknown quantizer method {method!r} (known: {known})")
    return key


def config_class(method: str) -> type:
    return QUANTIZERS[canonical_method(method)][1]


def make_config(method: str, config: dict[str, Any] | Any | None = None) -> Any:
    """The validated config dataclass for ``method`` (method presets, then ``config`` on top)."""
    _, cfg_cls, preset = QUANTIZERS[canonical_method(method)]
    if config is None:
        data: dict[str, Any] = {}
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        if not isinstance(config, cfg_cls):
            raise ConfigError(f"{method}: expected a {cfg_cls.__name__}, got {type(config).__name__}")
        return config
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ConfigError(f"{method}: config must be a mapping or a {cfg_cls.__name__}")
    try:
        return from_dict(cfg_cls, {**preset, **data}, where=canonical_method(method))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{canonical_method(method)}: {exc}") from None


def build_quantizer(method: str, config: dict[str, Any] | Any | None = None) -> Quantizer:
    """An unfitted quantizer of ``method`` configured by ``config``."""
    cls, _, _ = QUANTIZERS[canonical_method(method)]
    return cls(make_config(method, config))  # type: ignore[call-arg]


def load_quantizer(path: str | Path) -> Quantizer:
    """Load any saved quantizer (dispatch on the ``method`` recorded in its ``config.json``)."""
    cfg_file = Path(path) / CONFIG_FILE
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a saved quantizer)")
    method = json.loads(cfg_file.read_text()).get("method")
    if method not in _BY_SAVED_NAME:
        raise ValueError(f"{path}: unknown saved quantizer method {method!r}")
    return _BY_SAVED_NAME[method].load(path)


__all__ = [
    "QUANTIZERS",
    "CoBa",
    "CoBaConfig",
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
