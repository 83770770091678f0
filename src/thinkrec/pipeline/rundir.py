"""A run directory: every stage reads its inputs from and writes its artifacts to it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from thinkrec.utils.config import config_hash, to_dict
from thinkrec.utils.io import read_json, write_json


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(f"thinkrec.run.{self.root.name}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        log_file = str(self.root / "log.txt")
        if not any(getattr(h, "baseFilename", None) == str(Path(log_file).resolve()) for h in self.logger.handlers):
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(handler)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, msg: str) -> None:
        self.logger.info(msg)

    # A stage is done when its marker exists with the hash of the config that produced it.
    def is_done(self, stage: str, config: Any) -> bool:
        marker = self.root / stage / "done.json"
        return marker.exists() and read_json(marker).get("config_hash") == config_hash(config)

    def mark_done(self, stage: str, config: Any, **info: Any) -> None:
        write_json(self.root / stage / "done.json", {"config_hash": config_hash(config), "finished": time.time(), **info, "config": to_dict(config)})
