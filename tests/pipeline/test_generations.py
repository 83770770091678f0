"""Published generations: a rebuild in progress or killed never changes what ``thinkrec.load`` serves, and a node
built on other inputs than the ones beside it is refused at load, naming it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import thinkrec
from thinkrec.pipeline.config import load_run_config
from thinkrec.pipeline.generations import StaleNodeError, current
from thinkrec.utils.io import read_json, write_json

#: a change of the re-ranking features: the featurizer (and so every re-ranker) is rebuilt with other columns
NEW_FEATURES = {"rerank.feature_groups": []}


def _copy(run: Path, dst: Path, workshop_only: bool = False) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("generations") if workshop_only else None)
    return dst


def _served_lists(funnel, users):
    return [[it.item_id for it in r.items] for r in funnel.recommend(users=users, as_of="test", k=10)]


def test_a_rebuilt_featurizer_beside_old_rerankers_is_never_served(served_run, tmp_path):
    from thinkrec.pipeline.run import open_run

    root = _copy(served_run, tmp_path / "r")
    before = thinkrec.load(root)
    users = before.user_ids[:30]
    expected = _served_lists(before, users)
    n_features = len(before.featurizer.feature_names)
    # the lists (and featurizer) are rebuilt for the new config; the re-rankers are not, as when a kill lands
    # between the two nodes
    ctx = open_run(load_run_config(root / "config.yaml", [f"{k}={v}" for k, v in NEW_FEATURES.items()]), root,
                   log=lambda m: None)
    ctx.graph.ensure("rerank/lists")
    assert len(read_json(root / "rerank" / "featurizer" / "meta.json")["features"]) < n_features
    after = thinkrec.load(root)  # the published generation: the funnel the last evaluation measured
    assert after.generation == before.generation and len(after.featurizer.feature_names) == n_features
    assert _served_lists(after, users) == expected
    # the folders as they are (what a loader without generations would read) are refused before any request,
    # naming the stale re-ranker and the command that rebuilds it
    ws = _copy(root, tmp_path / "ws", workshop_only=True)
    record = read_json(ws / "funnel.json")
    write_json(ws / "funnel.json", {**record, "retriever": "merged", "reranker": "eglr"})
    with pytest.raises(StaleNodeError, match=r"rerank/eglr was built on rerank/lists \w+, but the rerank/lists "
                                             r"beside it is \w+ — rebuild it: thinkrec run --config .* --stages rerank"):
        thinkrec.load(ws)
    # asked for by name, a stale re-ranker is refused too (and is not listed as trained)
    write_json(ws / "funnel.json", {**record, "reranker": None})
    if record.get("retriever") != "merged" or record.get("reranker") is None:
        ws_funnel = thinkrec.load(ws)
        assert "eglr" not in ws_funnel.models["rerankers"]
        with pytest.raises(StaleNodeError, match="rerank/eglr"):
            ws_funnel.reranker("eglr")


KILL_BEFORE_RECORD = """
import os, signal, sys
import thinkrec
from thinkrec.pipeline import graph

real = graph.Graph._write_lineage


def killed(self, name, marker):
    if name == sys.argv[3]:  # the node's artifacts are written; its lineage and marker are not
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, name, marker)


graph.Graph._write_lineage = killed
thinkrec.run(sys.argv[1] + "/config.yaml", log=lambda m: None, **{"run.out_dir": sys.argv[2], "run.name": "r",
                                                                 "rerank.feature_groups": []})
"""


def test_a_kill_between_a_nodes_write_and_its_record_leaves_the_previous_generation(served_run, tmp_path):
    root = _copy(served_run, tmp_path / "r")
    before = thinkrec.load(root)
    users = before.user_ids[:30]
    expected = _served_lists(before, users)
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_RECORD, str(root), str(tmp_path), "rerank/lists"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (root / "stages" / "rerank.lists.json").exists() and not (root / "rerank" / "lists" / "lineage.json").exists()
    loaded = thinkrec.load(root)
    assert loaded.generation == before.generation and _served_lists(loaded, users) == expected
    # the next run resumes from what is consistent: it rebuilds the lists and everything after, and publishes
    thinkrec.run(root / "config.yaml", log=lambda m: None, **{"run.out_dir": str(tmp_path), "run.name": "r", **NEW_FEATURES})
    new = thinkrec.load(root)
    assert int(new.generation) == int(before.generation) + 1 and current(root) == root / "generations" / new.generation
    assert len(new.featurizer.feature_names) < len(before.featurizer.feature_names)
    # each generation serves what its own evaluation measured
    assert before.verify(100)["mismatches"] == 0 and new.verify(100)["mismatches"] == 0


def test_a_record_evaluated_on_other_builds_and_a_run_never_evaluated_are_refused(served_run, tmp_path):
    root = _copy(served_run, tmp_path / "r")
    generation = current(root)
    record = read_json(generation / "funnel.json")
    node, content = next(iter(record["built_on"].items()))
    assert content == read_json(generation / "stages" / f"{node.replace('/', '.')}.json")["content"]
    write_json(generation / "funnel.json", {**record, "built_on": {**record["built_on"], node: "0" * 16}})
    with pytest.raises(StaleNodeError, match=rf"funnel.json was evaluated on {node} 0{{16}}, but the {node} beside "
                                             r"it is \w+ — rebuild it: thinkrec run --config .* --stages evaluate$"):
        thinkrec.load(root)
    # a directory no evaluation finished in (no funnel.json): nothing measured to serve
    ws = _copy(served_run, tmp_path / "ws", workshop_only=True)
    (ws / "funnel.json").unlink()
    with pytest.raises(StaleNodeError, match="funnel.json is missing: no evaluation has finished"):
        thinkrec.load(ws)


def test_publishing_links_files_and_keeps_the_two_latest_generations(served_run, tmp_path):
    from thinkrec.pipeline.generations import KEEP, publish

    root = _copy(served_run, tmp_path / "r", workshop_only=True)
    (root / "checkpoints" / "x").mkdir(parents=True)
    (root / "checkpoints" / "x" / "state.json").write_text("{}")
    (root / "rerank" / ".lists.tmp123-ab").write_text("half")  # a killed write's temporary
    folders = [publish(root) for _ in range(KEEP + 2)]
    assert sorted(p.name for p in (root / "generations").iterdir() if p.is_dir()) == [f.name for f in folders[-KEEP:]]
    latest = current(root)
    assert latest == folders[-1]
    assert not (latest / "checkpoints").exists() and not (latest / "rerank" / ".lists.tmp123-ab").exists()
    assert not (latest / "log.txt").exists() and (latest / "funnel.json").exists()
    model = root / "sasrec" / "model.safetensors"
    assert (latest / "sasrec" / "model.safetensors").stat().st_ino == model.stat().st_ino  # a link, not a copy


def test_a_run_directory_of_an_older_thinkrec_is_adopted_without_retraining(served_run, tmp_path):
    root = _copy(served_run, tmp_path / "r", workshop_only=True)
    for lineage in root.rglob("lineage.json"):  # what a run directory from before lineages looks like
        lineage.unlink()
    for marker in (root / "stages").glob("*.json"):
        record = read_json(marker)
        record.pop("upstream_content", None)
        write_json(marker, record)
    finished = {p.name: read_json(p)["finished"] for p in (root / "stages").glob("*.json")}
    with pytest.raises(StaleNodeError, match="has no finished build here"):
        thinkrec.load(root)
    thinkrec.run(root / "config.yaml", log=lambda m: None, **{"run.out_dir": str(tmp_path), "run.name": "r"})
    assert {p.name: read_json(p)["finished"] for p in (root / "stages").glob("*.json")} == finished  # none rebuilt
    adopted = thinkrec.load(root)
    assert adopted.generation is not None and adopted.verify(50)["mismatches"] == 0
