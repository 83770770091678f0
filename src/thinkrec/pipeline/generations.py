"""Published generations of a run directory: what :func:`thinkrec.load` and ``thinkrec serve`` read.

A run directory is also the pipeline's workshop: while ``thinkrec run`` rebuilds a node, that node's folder holds
new files beside the old ones of the nodes downstream of it. So loading never reads the workshop. Each time the
evaluation step finishes (every node it evaluated up to date, ``funnel.json`` and the metrics written), the
directory is *published*: every file except checkpoints, logs and caches is hard-linked (copied where links are
not possible) into ``generations/<n>/``, and one atomic write of ``generations/current.json`` makes that folder
the one to load. Every artifact write in thinkrec is a rename of a complete temporary file, so a later rebuild
replaces names in the workshop and never changes a file a generation links. A kill at any instant leaves the
previous generation complete and current; older generations beyond :data:`KEEP` are removed after a switch.

:func:`check_nodes` is the consistency check at load: each node a loaded funnel uses must carry a lineage
(:data:`thinkrec.pipeline.graph.LINEAGE`) whose upstream content hashes are those of the upstream nodes present,
else :class:`StaleNodeError` names the node and the command that rebuilds it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from thinkrec.errors import UserError
from thinkrec.pipeline.graph import LINEAGE
from thinkrec.utils.io import read_json, write_json

FOLDER = "generations"
POINTER = "current.json"
#: generations kept: the current one and the one before (a server that loaded it keeps its open files anyway)
KEEP = 2
#: top-level entries of the run directory a generation leaves out: resumable state, logs, caches, the reports
#: (written after publishing, from the workshop) and the lock
SKIP_TOP = {FOLDER, "checkpoints", "log.txt", ".lock", "plots", "report.md", "report.html", "timings.json"}
SKIP_REL = {"eval/ranks"}


class StaleNodeError(UserError, RuntimeError):
    """A node of a run directory was built on other inputs than the ones beside it (or never finished)."""

    def __init__(self, root: Path, node: str, why: str, stage: str):
        self.node = node
        stages = stage if stage == "evaluate" else f"{stage} evaluate"
        super().__init__(f"{root}: {node} {why} — rebuild it: thinkrec run --config {root}/config.yaml --stages {stages}")


def current(root: str | Path) -> Path | None:
    """The folder of the run's current generation, or None (never published, or made by an older thinkrec)."""
    root = Path(root)
    pointer = root / FOLDER / POINTER
    if not pointer.exists():
        return None
    folder = root / FOLDER / read_json(pointer)["generation"]
    return folder if folder.is_dir() else None


def _link_tree(src: Path, dst: Path, rel: str = "") -> int:
    n = 0
    dst.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        name = entry.name
        sub = f"{rel}/{name}" if rel else name
        # temporary names of writes in flight (".x.tmp…", ".x.old…") and skipped entries stay out
        if name.startswith(".") or (not rel and name in SKIP_TOP) or sub in SKIP_REL:
            continue
        if entry.is_dir(follow_symlinks=False):
            n += _link_tree(Path(entry.path), dst / name, sub)
        elif entry.is_file(follow_symlinks=False):
            try:
                os.link(entry.path, dst / name)
            except OSError:  # a file system without hard links: a copy
                shutil.copy2(entry.path, dst / name)
            n += 1
    return n


def publish(root: str | Path, log: Any = None) -> Path:
    """Snapshot the run directory as a new generation and make it current (one atomic pointer write)."""
    root = Path(root)
    gens = root / FOLDER
    gens.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in gens.iterdir() if p.is_dir() and p.name.isdigit()]
    name = f"{max(numbers, default=0) + 1:06d}"
    tmp = gens / f".new-{secrets.token_hex(4)}"
    try:
        files = _link_tree(root, tmp)
        os.replace(tmp, gens / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(gens / POINTER, {"generation": name, "published": time.time(), "files": files})
    prune(root)
    if log is not None:
        log(f"published generation {name} ({files} files): thinkrec.load and thinkrec serve read it")
    return gens / name


def prune(root: Path) -> None:
    """Remove generations beyond :data:`KEEP` (never the current one) and folders left by killed publishes."""
    gens = root / FOLDER
    cur = current(root)
    for p in gens.iterdir():
        if p.is_dir() and p.name.startswith(".new-"):
            shutil.rmtree(p, ignore_errors=True)
    numbered = sorted((p for p in gens.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for p in numbered[:-KEEP]:
        if cur is None or p.resolve() != cur.resolve():
            with contextlib.suppress(OSError):
                shutil.rmtree(p)


# ---------------------------------------------------------------------------------------------- consistency
def lineage(root: Path, home: str) -> dict[str, Any] | None:
    p = root / home / LINEAGE
    return read_json(p) if p.exists() else None


def check_nodes(root: str | Path, nodes: dict[str, str | None], run_root: Path | None = None,
                evaluated: dict[str, str] | None = None) -> None:
    """Raise :class:`StaleNodeError` unless every node of ``nodes`` ({node: home folder}) and every node upstream
    of it that has a home is complete (a lineage) and was built on the content of the upstream nodes present.

    ``nodes`` maps node names to their home folders (``data`` → ``data``, ``rerank/eglr`` → ``rerank/eglr``);
    upstream nodes are found through the lineages and checked too (transitively). ``run_root``: the run
    directory named in the message (the generation's parent); ``evaluated``: the contents ``funnel.json`` recorded
    for the nodes its evaluation measured (``built_on``), which the nodes present must still have."""
    root = Path(root)
    where = run_root or root
    homes = dict(nodes)
    seen: dict[str, dict[str, Any]] = {}
    todo = list(nodes)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        home = homes.get(name)
        if home is None:  # a node without a home folder (the re-score weights): its marker holds the lineage
            marker = root / "stages" / f"{name.replace('/', '.')}.json"
            raw = read_json(marker) if marker.exists() else None
            rec = None if raw is None or "upstream_content" not in raw else \
                {"node": name, "content": raw["content"], "upstream": raw["upstream_content"]}
        else:
            rec = lineage(root, home)
        if rec is None:
            raise StaleNodeError(where, name, "has no finished build here (interrupted, being rebuilt, or made by an "
                                 "older thinkrec)", stage_of(name))
        seen[name] = rec
        for up in rec.get("upstream", {}):
            homes.setdefault(up, home_of(up))
            todo.append(up)
    for name, content in (evaluated or {}).items():
        if name in seen and seen[name].get("content") != content:
            raise StaleNodeError(where, "funnel.json", f"was evaluated on {name} {content}, but the {name} beside it "
                                 f"is {seen[name].get('content')}", "evaluate")
    for name, rec in seen.items():
        for up, content in rec.get("upstream", {}).items():
            have = seen[up].get("content")
            if have != content:
                raise StaleNodeError(where, name, f"was built on {up} {content}, but the {up} beside it is {have}",
                                     stage_of(name))


def home_of(node: str) -> str | None:
    """A node's home folder by the graph's naming (None: the re-score weights, kept in their retriever's folder)."""
    return None if node.endswith("/rescore") else node


def stage_of(node: str) -> str:
    """The ``stages:`` entry that rebuilds ``node`` (a scorer's: the one its registry entry names)."""
    from thinkrec.pipeline.scorers import SCORERS

    folder = node.removesuffix("/rescore")
    for entry in SCORERS.entries():
        if entry.obj.folder(entry.name) == folder:
            return entry.obj.stage
    return {"sids": "tokenize"}.get(node, node.split("/")[0])  # data, candidates, rerank/…, llm
