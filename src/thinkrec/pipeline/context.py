"""What the stages of one invocation share: the resolved config, the run directory, the graph, the data loaded
once, the split, the seen-item policy and the loaded scorers (:class:`Context`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import SequenceSplit
from thinkrec.pipeline.config import RunConfig
from thinkrec.pipeline.graph import Graph
from thinkrec.pipeline.rundir import RunDir
from thinkrec.pipeline.scorers import SCORERS
from thinkrec.pipeline.split import split_of


@dataclass
class Context:
    """What stages share in memory during one invocation (everything is also on disk)."""

    config: RunConfig  # resolved: every stage's seed and device set from run.seed / run.device
    rundir: RunDir
    log: Callable[[str], None]
    progress: Callable[[str, int, int], None] | None = None
    requested: list[str] = field(default_factory=list)
    dataset: Dataset | None = None
    split: SequenceSplit | None = None
    scorers: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    graph: Graph | None = None
    data_checked: bool = False  # the data pre-flight ran (thinkrec.pipeline.preflight)
    _seen: Any = None  # the resolved seen-item policy (Context.seen)

    @property
    def root(self) -> Path:
        return self.rundir.root

    def get_dataset(self) -> Dataset:
        if self.dataset is None:
            self.graph.ensure("data")
            if self.dataset is None:  # up to date: read back, not rebuilt
                dataset = Dataset.load(self.root / "data")
                self.check_data(dataset)
                self.dataset = dataset
        return self.dataset

    def check_data(self, dataset: Dataset) -> None:
        """Once per invocation, before any model trains: what the requested stages need of the data
        (:func:`thinkrec.pipeline.preflight.check_data`); keeps the split it computes."""
        if not self.data_checked:
            from thinkrec.pipeline.preflight import check_data

            split = split_of(dataset, self.config)
            check_data(dataset, self.config, self.requested, split)
            self.split, self.data_checked = split, True

    def get_split(self) -> SequenceSplit:
        if self.split is None:
            self.split = split_of(self.get_dataset(), self.config)
        return self.split

    def checkpoints(self, part: str) -> Path:
        """A folder for one trainer's checkpoint inside the running node's checkpoint folder."""
        return self.graph.checkpoint_dir() / part

    def stage_progress(self, name: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        return lambda step, total: self.progress(name, step, total)

    def scorer(self, name: str) -> Any:
        """A trained scorer, loaded from its folder alone (trained first if it is not up to date)."""
        if name not in self.scorers:
            spec = SCORERS.get(name)
            node = spec.folder(name)
            self.graph.ensure(f"{node}/rescore" if spec.generative else node)
            self.scorers[name] = spec.load(self.root / node, self.config.run.device)
        return self.scorers[name]

    def seen(self) -> Any:
        """The run's seen-item policy resolved on the training split (:mod:`thinkrec.data.seen`)."""
        from thinkrec.data.seen import resolve_seen

        if self._seen is None:
            split, ev = self.get_split(), self.config.eval
            self._seen = resolve_seen(ev.seen, ev.seen_threshold, split.train_offsets, split.train_items)
        return self._seen

    def rerank_source(self) -> str:
        cfg = self.config.rerank
        if cfg.source == "auto":
            imps = self.get_dataset().impressions
            return "impressions" if imps is not None and imps.height > 0 else "funnel"
        return cfg.source
