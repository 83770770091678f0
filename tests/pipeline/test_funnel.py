"""The funnel as a library: cache keys from declared inputs, standalone model folders, ``thinkrec.load``."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import thinkrec
from tests.pipeline.test_run import TINY
from thinkrec.data.batching import pad_histories
from thinkrec.pipeline.config import load_run_config, resolve, stage_seed
from thinkrec.utils.config import ConfigError
from thinkrec.utils.io import read_json

FUNNEL = [*TINY, "rerank.source=funnel", "rerank.models=[initial,dnn,eglr]", "retrieval.rescore_weight=null"]


def _overrides(out_dir, extra=()):
    return {s.split("=", 1)[0]: _yaml(s.split("=", 1)[1]) for s in [*FUNNEL, f"run.out_dir={out_dir}", *extra]}


def _yaml(v):
    import yaml

    return yaml.safe_load(v)


@pytest.fixture(scope="module")
def funnel_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("funnel")
    root = thinkrec.run("configs/synthetic.yaml", log=lambda m: None, **_overrides(out, ["run.name=f"]))
    return Path(root)


def _finished(root):
    return {p.stem: read_json(p)["finished"] for p in (root / "stages").glob("*.json")}


def test_derived_seeds_and_devices_come_from_run():
    cfg = resolve(load_run_config("configs/synthetic.yaml", ["run.seed=7"]))
    assert cfg.sasrec.seed == stage_seed(7, "sasrec") and cfg.rerank.train.seed == stage_seed(7, "rerank")
    assert len({cfg.sasrec.seed, cfg.tokenize.seed, cfg.retrieval.train.seed, cfg.rerank.train.seed, cfg.llm.seed}) == 5
    cuda = resolve(load_run_config("configs/synthetic.yaml", ["run.device=cuda"]))
    assert cuda.tokenize.device == cuda.llm.device == "cuda"
    with pytest.raises(ConfigError, match=r"sasrec\.seed: set run\.seed"):
        load_run_config("configs/synthetic.yaml", ["sasrec.seed=3"])
    with pytest.raises(ConfigError, match=r"llm\.device: set run\.device"):
        load_run_config("configs/synthetic.yaml", ["llm.device=cuda"])


def test_load_reproduces_the_pipelines_test_metrics_exactly(funnel_run):
    funnel = thinkrec.load(funnel_run)
    test = read_json(funnel_run / "metrics.json")["test"]
    assert set(funnel.models["scorers"]) == {"popularity", "sasrec", "tiger", "s2gr", "cooc"}
    for name in funnel.models["scorers"]:
        assert funnel.evaluate(name) == test[name]["metrics"], name
    rerank = read_json(funnel_run / "rerank" / "metrics.json")
    for name in ("initial", "dnn", "eglr"):
        again = funnel.evaluate(name)
        for key in ("ndcg@5", "ndcg@10", "map@5", "recall@1", "recall@5"):
            assert again[key] == rerank["models"][name][key], (name, key)
    record = read_json(funnel_run / "funnel.json")
    # merged candidates: the final list is the best on the comparison slice among each source alone, the merge
    # order and every re-ranker, and the test evaluation reports exactly that list
    assert rerank["candidates"] == "merged" and record["sources"] == ["sasrec", "tiger", "s2gr", "cooc", "popularity"]
    best = max(record["comparison"].values())
    assert record["comparison"][record["final"]] == best and "comparison slice" in record["final_why"]
    final = test["funnel"]["final"]
    assert final == record["final"]
    served = test[final]["metrics"] if final in test and final not in test["funnel"]["models"] else \
        test["funnel"]["models"][final]["metrics"]
    assert set(test["funnel"]["paired_tests"]) == {f"funnel_vs_{n}" for n in record["sources"] if n != final}
    assert served["ndcg@10"] == test["funnel"]["models"].get(final, test.get(final, {}))["metrics"]["ndcg@10"]


def test_recommend_matches_evaluation_and_ignores_batching(funnel_run):
    funnel = thinkrec.load(funnel_run)
    split = funnel.split
    users = funnel.dataset.users.sort("user")["user_id"].to_list()
    test_users = [users[u] for u in split.test.users]
    for name in ("s2gr", "sasrec"):
        recs = funnel.recommend(users=test_users, k=20, as_of="test", retriever=name, reranker=None)
        ev = funnel.config.eval
        from thinkrec.eval.protocol import compute_ranks

        ranks = compute_ranks(funnel.scorer(name).score, split.test, funnel.config.sasrec.max_len, ev.batch_size,
                              funnel.seen["exclude"])
        ids = funnel.dataset.items.sort("item")["item_id"].to_list()
        for r, target, rank in zip(recs, split.test.targets, ranks, strict=True):
            got = [it.item_id for it in r.items]
            pos = got.index(ids[target]) if ids[target] in got else None
            assert (pos == rank) if rank < 20 else pos is None, (name, r.user_id)
    # batch size and composition do not change a user's list
    some = test_users[:40]
    a = funnel.recommend(users=some, k=10, batch_size=256, explain=True)
    b = funnel.recommend(users=list(reversed(some)), k=10, batch_size=7)[::-1]
    for x, y in zip(a, b, strict=True):
        assert [i.item_id for i in x.items] == [i.item_id for i in y.items]
        assert np.allclose([i.score for i in x.items], [i.score for i in y.items], atol=1e-6)
    # a given history equals the same user's known history
    h = funnel.recommend(histories=[a[0].history], k=10)[0]
    assert [i.item_id for i in h.items] == [i.item_id for i in a[0].items] and h.user_id is None
    # explanations: thinking tokens per item from S²GR or nothing from TIGER; EGLR reasoning per position
    if funnel.record["retriever"] == "s2gr":
        assert a[0].items[0].explanation["thinking"][0]["level"] == 1
    if funnel.record["reranker"] == "eglr":
        assert len(a[0].explanation["reranker_reasoning"]["entropy"]) > 0
    cold = funnel.recommend(histories=[[]], k=5)[0]
    assert cold.cold_start and cold.stages["retriever"] == "popularity" and len(cold.items) == 5
    with pytest.raises(KeyError, match="unknown item"):
        funnel.recommend(histories=[["no-such-item"]])
    seen = funnel.recommend(users=some[:5], k=10, exclude_seen=True)
    for r in seen:
        assert not set(r.history) & {i.item_id for i in r.items}


def test_the_seen_policy_reaches_every_served_list(funnel_run):
    from thinkrec.data.seen import repeat_share

    funnel = thinkrec.load(funnel_run)
    split = funnel.split
    record, metrics = read_json(funnel_run / "funnel.json"), read_json(funnel_run / "metrics.json")
    # auto on data without repeats: measured share recorded, seen items excluded — in the record, the metrics, the report
    share = repeat_share(split.train_offsets, split.train_items)
    assert record["seen"]["policy"] == "auto" and record["seen"]["repeat_share"] == pytest.approx(share)
    assert record["seen"]["exclude"] == (share < record["seen"]["threshold"]) and metrics["seen"] == record["seen"]
    assert "seen items" in (funnel_run / "report.md").read_text()
    assert funnel.seen["exclude"], "the synthetic data has almost no repeats: auto must exclude"
    users = funnel.user_ids[:80]
    for retriever, reranker in (("merged", None), ("merged", True), ("sasrec", None), ("tiger", None), ("cooc", None),
                                ("s2gr", None)):
        for as_of in (None, "test"):
            recs = funnel.recommend(users=users, k=10, as_of=as_of, retriever=retriever, reranker=reranker)
            for r in recs:
                assert r.items and not set(r.history) & {i.item_id for i in r.items}, (retriever, reranker, as_of)
    # the candidates every list was built from hold no seen item either (evaluation = serving)
    from thinkrec.data.seen import seen_mask
    from thinkrec.retrieval.candidates import CandidateSet

    for part in ("valid", "test"):
        cand, ex = CandidateSet.load(funnel_run / "candidates" / part), getattr(split, part)
        assert not seen_mask(cand.items, [ex.history(i) for i in range(len(ex))]).any(), part
    # keep: the switch reaches the served list (SASRec's top-50 of a long history then holds seen items)
    kept = funnel.recommend(users=users, k=50, retriever="sasrec", reranker=None, exclude_seen=False)
    assert any(set(r.history) & {i.item_id for i in r.items} for r in kept)


def test_merged_funnel_serves_exactly_the_evaluated_lists(funnel_run):
    from thinkrec.rerank.lists import RerankLists

    funnel = thinkrec.load(funnel_run)
    test = RerankLists.load(funnel_run / "rerank" / "lists" / "test")
    users = funnel.dataset.users.sort("user")["user_id"].to_list()
    ids = funnel.dataset.items.sort("item")["item_id"].to_list()
    some = [users[u] for u in test.users[:60]]
    k = test.list_len
    for reranker in (None, "dnn", "eglr"):
        recs = funnel.recommend(users=some, k=k, as_of="test", retriever="merged", reranker=reranker)
        order = np.arange(k)[None].repeat(60, 0) if reranker is None else \
            np.load(funnel_run / "rerank" / reranker / "per_list.npz")["orders"][:60].astype(np.int64)
        want = np.take_along_axis(test.items[:60], order, 1)
        for r, row in zip(recs, want, strict=True):
            assert [it.item_id for it in r.items] == [ids[i] for i in row if i >= 0], reranker
            assert all("candidates" in it.ranks and any(key.startswith("source:") for key in it.ranks) for it in r.items)


SCRIPT = """
import sys, json, numpy as np, torch
from pathlib import Path
from thinkrec.pipeline.scorers import SCORERS
from thinkrec.rerank.stage import load_reranker
from thinkrec.rerank.lists import RerankLists
from thinkrec.rerank.train import rerank_orders
root, tokens = Path(sys.argv[1]), torch.tensor(json.loads(sys.argv[2]))
out = {}
for name in ("sasrec", "s2gr", "tiger", "popularity"):
    s = SCORERS.get(name).load(root / SCORERS.get(name).folder(name), "cpu")
    with torch.inference_mode():
        out[name] = s.score(torch.zeros(len(tokens), dtype=torch.long), tokens).numpy().tolist()
lists = RerankLists.load(root / "rerank" / "lists" / "test")
out["eglr"] = rerank_orders(load_reranker(root / "rerank" / "eglr")[1], lists).tolist()
print(json.dumps(out))
"""


def test_model_folders_load_alone_in_a_fresh_process(funnel_run, tmp_path):
    # only the model folders (and the lists to score), copied away from the run directory
    alone = tmp_path / "alone"
    for rel in ("sasrec", "retrieval/s2gr", "retrieval/tiger", "popularity", "rerank/eglr", "rerank/lists/test"):
        shutil.copytree(funnel_run / rel, alone / rel)
    split_offsets, items = np.array([0, 3, 5, 9]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    tokens = pad_histories(split_offsets, items, np.arange(3), 20).tolist()
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(alone), json.dumps(tokens)], capture_output=True, text=True,
                         check=True)
    fresh = json.loads(res.stdout.strip().splitlines()[-1])
    funnel = thinkrec.load(funnel_run)
    t = torch.tensor(tokens)
    for name in ("sasrec", "s2gr", "tiger", "popularity"):
        with torch.inference_mode():
            here = funnel.scorer(name).score(torch.zeros(3, dtype=torch.long), t).numpy()
        # equal up to float summation order: a process whose thread pool was resized (the suite's modules set
        # 1 thread, runs set run.threads) splits reductions differently from a fresh one (≈ 3e-8 here)
        np.testing.assert_allclose(np.asarray(fresh[name], dtype=np.float32), here, rtol=1e-5, atol=1e-6, err_msg=name)
    from thinkrec.rerank.lists import RerankLists

    lists = RerankLists.load(funnel_run / "rerank" / "lists" / "test")
    assert np.array_equal(np.asarray(fresh["eglr"]), funnel.rerank("eglr", lists))


def test_changing_an_input_reruns_that_stage_and_downstream_only(funnel_run, tmp_path):
    root = tmp_path / "f"
    shutil.copytree(funnel_run, root)
    before = _finished(root)
    thinkrec.run(root / "config.yaml", log=lambda m: None, **{"run.out_dir": str(tmp_path), "run.name": "f"})
    assert _finished(root) == before  # nothing changed: nothing reruns
    thinkrec.run(root / "config.yaml", log=lambda m: None,
                 **{"run.out_dir": str(tmp_path), "run.name": "f", "tokenize.quantizer.codebook_size": 16})
    after = _finished(root)
    changed = {k for k in before if after[k] != before[k]}
    downstream = {"sids", "retrieval.tiger", "retrieval.s2gr", "retrieval.tiger.rescore", "retrieval.s2gr.rescore",
                  "candidates", "rerank.lists", "rerank.evaluator", "rerank.initial", "rerank.dnn", "rerank.eglr"}
    assert changed == downstream, changed ^ downstream
    # a new run.seed: the lists (whose hold-out split uses it) are rebuilt, and every seeded stage retrains
    thinkrec.run(root / "config.yaml", log=lambda m: None,
                 **{"run.out_dir": str(tmp_path), "run.name": "f", "run.seed": 1})
    reseeded = _finished(root)
    assert reseeded["rerank.lists"] != after["rerank.lists"] and reseeded["sasrec"] != after["sasrec"]
    assert reseeded["data"] == after["data"] and reseeded["popularity"] == after["popularity"]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md has no python example marked <!-- python-example -->"
    code = block.group(1)
    # the README trains at the preset's size; the test shrinks it with the same overrides the other tests use
    monkeypatch.chdir(Path(__file__).parents[2])
    shrink = _overrides(tmp_path)
    real_run = thinkrec.run
    monkeypatch.setattr(thinkrec, "run", lambda config, **kw: real_run(config, log=lambda m: None, **{**kw, **shrink}))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["recs"] and len(scope["recs"][0].items) == 10


def test_shared_nodes_are_reused_only_under_the_same_inputs(funnel_run, tmp_path):
    from thinkrec.pipeline.run import open_run, share_nodes

    cfg = load_run_config(funnel_run / "config.yaml")
    share_nodes(funnel_run, tmp_path / "v", ("data", "sids"))
    ctx = open_run(cfg, tmp_path / "v", log=lambda m: None)
    assert ctx.graph.is_current("data") and ctx.graph.is_current("sids") and not ctx.graph.is_current("sasrec")
    other = open_run(load_run_config(funnel_run / "config.yaml", ["tokenize.quantizer.codebook_size=8"]), tmp_path / "v",
                     log=lambda m: None)
    assert other.graph.is_current("data") and not other.graph.is_current("sids")
