"""thinkrec: reasoning-enhanced generative recommendation.

    import thinkrec
    root = thinkrec.run("configs/synthetic.yaml", **{"sasrec.epochs": 5})   # train the funnel (cached by stage)
    funnel = thinkrec.load(root)
    funnel.recommend(users=["u1"], k=10, explain=True)
"""

from __future__ import annotations

import os
from pathlib import Path

# MKL's matrix products may round differently run to run depending on how buffers happen to be aligned; its
# conditional-numerical-reproducibility mode removes that, so a resumed run ends bit-identical to an uninterrupted
# one (same machine, same thread count). Effective when thinkrec is imported before torch (the CLI always is).
os.environ.setdefault("MKL_CBWR", "AUTO")
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thinkrec.pipeline.config import RunConfig
    from thinkrec.pipeline.funnel import Funnel

__version__ = "0.1.0"
__all__ = ["load", "run"]


def run(config: str | Path | RunConfig | None = None, stages: list[str] | None = None, log: Any = print,
        **overrides: Any) -> Path:
    """Train (or bring up to date) the funnel of a config: a YAML path, a :class:`RunConfig` or None (defaults).

    ``overrides`` are dotted names → values (``thinkrec.run(path, **{"run.seed": 1})``, or with the dots as
    double underscores: ``run__seed=1``). Returns the run directory.
    """
    import copy

    import yaml

    from thinkrec.pipeline.config import RunConfig, load_run_config
    from thinkrec.pipeline.run import run_pipeline

    sets = [f"{k.replace('__', '.')}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in overrides.items()]
    if isinstance(config, RunConfig):
        if sets:
            from thinkrec.pipeline.config import user_dict
            from thinkrec.utils.config import from_dict, set_dotted

            data = copy.deepcopy(user_dict(config))
            for s in sets:
                set_dotted(data, s)
            config = from_dict(RunConfig, data)
        cfg = config
    else:
        cfg = load_run_config(config, sets)
    return run_pipeline(cfg, stages, log=log)


def load(run_dir: str | Path, device: str | None = None) -> Funnel:
    """The trained funnel of a run directory: ``load(root).recommend(users=[...], k=10)``."""
    from thinkrec.pipeline.funnel import load as _load

    return _load(run_dir, device)
