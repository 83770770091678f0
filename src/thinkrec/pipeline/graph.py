"""The stage graph: nodes with declared inputs, cache keys derived from exactly those inputs.

A node declares the config it reads (``inputs``: a function of the resolved :class:`RunConfig`), the nodes whose
artifacts it reads (``upstream``) and the artifacts it writes (``artifacts``: paths under the run directory).
Its cache key is the hash of its inputs and of its upstream nodes' *content* hashes (hashes of the bytes of their
artifacts, not their paths), so changing any input reruns that node and everything downstream of it, nothing else.
Each finished node leaves ``stages/<name>.json`` in the run directory: key, content hash, what it reported, and
the content hashes of the upstream nodes it was built from; the same lineage goes into each of its home folders
(``lineage.json``, left out of the content hash), so a model folder says on its own what it was trained on. A node
that starts rebuilding first removes its marker and lineage files: from that instant it, and through the keys
everything downstream of it, is no longer current, and a half-written folder never carries a lineage.
:mod:`thinkrec.pipeline.generations` publishes consistent snapshots of the whole directory for loading.

While a node runs, its trainers keep their resumable state in ``checkpoints/<name>/`` (stamped with the node's
key, so a checkpoint left by other inputs is discarded, never resumed); the folder goes once the marker is written.

Under torch.distributed (``torchrun``) every rank walks the graph in the same order. Rank 0 decides which nodes are
up to date and alone writes markers and checkpoint folders. A ``distributed`` node (a data-parallel trainer) runs
on every rank — its run function writes its artifacts on rank 0 only; any other node runs on rank 0 alone
(:func:`thinkrec.utils.distributed.solo`) while the other ranks wait at a barrier, then read what it wrote. The run
directory must be one file system for every rank (on several nodes: a shared one).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkrec.utils import distributed as dist
from thinkrec.utils.config import config_hash, to_dict
from thinkrec.utils.io import read_json, write_json


@dataclass(frozen=True)
class Node:
    name: str  # e.g. "retrieval/s2gr"
    inputs: Callable[[Any], Any]  # Context → the config this node reads (from the resolved RunConfig)
    upstream: Callable[[Any], list[str]]  # Context → names of the nodes it reads
    artifacts: tuple[str, ...]  # files / folders (relative to the run dir) that are this node's output
    run: Callable[[Any], dict[str, Any] | None]  # Context → info recorded in the marker
    distributed: bool = False  # runs on every rank of a torchrun launch (a data-parallel trainer), else on rank 0
    homes: tuple[str, ...] = ()  # folders this node alone writes: each gets its lineage.json (what it was built on)


#: A node's lineage file in each of its home folders: node, key, its own content, its upstream nodes' contents.
LINEAGE = "lineage.json"


def content_hash(root: Path, paths: tuple[str, ...]) -> str:
    """SHA-256 over the relative names and bytes of every file under ``paths`` (sorted, so order-free)."""
    h = hashlib.sha256()
    for rel in paths:
        p = root / rel
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name != LINEAGE) if p.is_dir() \
            else ([p] if p.exists() else [])
        if not files:
            raise FileNotFoundError(f"{p}: the artifact a finished stage should have written is missing")
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _without_device(obj: Any) -> Any:
    """The device is not an input: a model trained on any device is the same artifact (up to float noise)."""
    if isinstance(obj, dict):
        return {k: _without_device(v) for k, v in obj.items() if k != "device"}
    if isinstance(obj, list):
        return [_without_device(v) for v in obj]
    return obj


class Graph:
    """Runs nodes make-style: :meth:`ensure` brings a node's upstream up to date first, then the node."""

    def __init__(self, nodes: list[Node], ctx: Any, root: Path, log: Callable[[str], None]):
        self.nodes = {n.name: n for n in nodes}
        self.ctx, self.root, self.log = ctx, Path(root), log
        self._fresh: set[str] = set()
        self._running: list[str] = []  # nodes being run (a node may ensure others from inside its run)

    def marker_path(self, name: str) -> Path:
        return self.root / "stages" / f"{name.replace('/', '.')}.json"

    def marker(self, name: str) -> dict[str, Any] | None:
        p = self.marker_path(name)
        return read_json(p) if p.exists() else None

    def checkpoint_dir(self, name: str | None = None) -> Path:
        """Where node ``name`` (default: the node running now) keeps its trainers' checkpoints."""
        name = name or (self._running[-1] if self._running else None)
        if name is None:
            raise RuntimeError("checkpoint_dir: no node is running")
        return self.root / "checkpoints" / name.replace("/", ".")

    def _open_checkpoints(self, name: str, key: str) -> None:
        folder = self.checkpoint_dir(name)
        stamp = folder / "key.txt"
        if folder.exists() and (not stamp.exists() or stamp.read_text() != key):
            self.log(f"{name}: discarding checkpoints left by other inputs")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key)

    def key(self, name: str) -> str:
        node = self.nodes[name]
        ups = {u: (self.marker(u) or {}).get("content") for u in node.upstream(self.ctx)}
        return config_hash({"inputs": _without_device(to_dict(node.inputs(self.ctx))), "upstream": ups})

    def is_current(self, name: str) -> bool:
        m = self.marker(name)
        return m is not None and m.get("key") == self.key(name)

    def upstream_content(self, name: str) -> dict[str, str | None]:
        return {u: (self.marker(u) or {}).get("content") for u in self.nodes[name].upstream(self.ctx)}

    def _write_lineage(self, name: str, marker: dict[str, Any]) -> None:
        """``lineage.json`` into each home folder of ``name``: what the folder was built from."""
        record = {"node": name, "key": marker["key"], "content": marker["content"],
                  "upstream": marker.get("upstream_content", self.upstream_content(name))}
        for home in self.nodes[name].homes:
            if (self.root / home).is_dir():
                write_json(self.root / home / LINEAGE, record)

    def _invalidate(self, name: str) -> None:
        """Before ``name`` rewrites its artifacts: its marker and lineage go first, so neither it nor anything
        downstream of it (whose keys hold its content) counts as current until it finishes again."""
        self.marker_path(name).unlink(missing_ok=True)
        for home in self.nodes[name].homes:
            (self.root / home / LINEAGE).unlink(missing_ok=True)
        for rel in (*self.nodes[name].artifacts, *self.nodes[name].homes):  # temporaries a killed write left
            p = self.root / rel
            for tmp in p.parent.glob(f".{p.name}.*") if p.parent.is_dir() else ():
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def ensure(self, name: str) -> dict[str, Any]:
        """Bring ``name`` up to date (its upstream first) and return its marker."""
        if name not in self.nodes:
            raise ValueError(f"unknown stage node {name!r}; known: {', '.join(self.nodes)}")
        node = self.nodes[name]
        # no collective on this path: a rank may reach it where another does not (a cached dataset); the fresh
        # sets are the same on every rank outside solo work (sync after it), so the other path is taken by all
        if name not in self._fresh:
            for up in node.upstream(self.ctx):
                self.ensure(up)
            if dist.broadcast(self.is_current(name)):  # rank 0's view, on every rank
                self.log(f"{name}: up to date, reusing {', '.join(node.artifacts)}")
                marker = self.marker(name) or {}
                if dist.is_main() and ("upstream_content" not in marker or any(
                        not (self.root / h / LINEAGE).exists() for h in node.homes if (self.root / h).is_dir())):
                    # a run directory of an older thinkrec: its lineage, from the marker the key just confirmed
                    marker["upstream_content"] = self.upstream_content(name)
                    self._write_lineage(name, marker)
                    write_json(self.marker_path(name), marker)
            elif node.distributed or not dist.active():
                self._run(name)
            else:  # rank 0 runs it alone; the others wait, then read its artifacts
                if dist.is_main():
                    with dist.solo():
                        self._run(name)
                self.sync()
            self._fresh.add(name)
        return self.marker(name) or {}

    def sync(self) -> None:
        """After work rank 0 did alone (it may have ensured nodes on the way): every rank takes rank 0's set of
        up-to-date nodes. A collective (and the barrier the waiting ranks sit at)."""
        if dist.active():
            self._fresh = set(dist.broadcast(sorted(self._fresh)))

    def _run(self, name: str) -> None:
        node = self.nodes[name]
        t = time.perf_counter()
        key = self.key(name)
        self.log(f"{name}: building")
        if dist.is_main():
            self._invalidate(name)
            self._open_checkpoints(name, key)
        dist.barrier()  # stale checkpoints are gone before any rank looks for one
        self._running.append(name)
        try:
            info = node.run(self.ctx) or {}
        finally:
            self._running.pop()
        wall = time.perf_counter() - t
        if dist.is_main():
            marker = {"key": key, "content": content_hash(self.root, node.artifacts), "finished": time.time(),
                      "wall_s": wall, "info": info, "upstream": node.upstream(self.ctx),
                      "upstream_content": self.upstream_content(name), "inputs": to_dict(node.inputs(self.ctx))}
            self._write_lineage(name, marker)  # the folders first: a marker always finds its lineage written
            write_json(self.marker_path(name), marker)
            shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)
        dist.barrier()
