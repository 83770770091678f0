"""A run directory: every stage reads its inputs from and writes its artifacts to it (markers: pipeline/graph.py)."""

from __future__ import annotations

import logging
from pathlib import Path


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(f"thinkrec.run.{self.root.resolve()}")  # one logger per folder, not per name
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
