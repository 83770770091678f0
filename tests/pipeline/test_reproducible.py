"""Headline runs are reproducible: the same config and seed give the same metrics and the same served list in a
fresh run directory; the budget fields are caps, not schedules."""

import json

import numpy as np

import thinkrec
from tests.pipeline.test_run import TINY
from thinkrec.utils.io import read_json

# SASRec + co-occurrence + EASE + popularity merged, re-ranked by the DNN and LightGBM (no SIDs: the fast funnel)
SMALL = [*TINY, "rerank.source=funnel", "rerank.models=[initial,dnn,lightgbm]", "rerank.train.epochs=2",
         "candidates.sources=[sasrec,cooc,ease,popularity]", "candidates.k=20",
         "stages=[data,popularity,sasrec,candidates,rerank,evaluate]"]


def _run(out, name, seed):
    overrides = {s.split("=", 1)[0]: _yaml(s.split("=", 1)[1]) for s in SMALL}
    overrides.update({"run.out_dir": str(out), "run.name": name, "run.seed": seed, "rerank.train.gbdt.num_threads": 1})
    return thinkrec.run("configs/synthetic.yaml", log=lambda m: None, **overrides)


def _no_timing(obj):
    """Everything but wall times and speeds (which depend on the machine's load, not on the run)."""
    if isinstance(obj, dict):
        return {k: _no_timing(v) for k, v in obj.items()
                if not (k.endswith(("_s", "per_s", "_ms")) or k in ("profiles", "plots"))}
    return [_no_timing(v) for v in obj] if isinstance(obj, list) else obj


def _yaml(v):
    import yaml

    return yaml.safe_load(v)


def test_same_config_and_seed_give_the_same_metrics_and_served_lists(tmp_path):
    a, b, c = _run(tmp_path, "a", 3), _run(tmp_path, "b", 3), _run(tmp_path, "c", 4)
    ma, mb, mc = (read_json(r / "eval" / "metrics.json") for r in (a, b, c))
    assert json.dumps(_no_timing(ma), sort_keys=True) == json.dumps(_no_timing(mb), sort_keys=True)
    ra, rb = (read_json(r / "rerank" / "metrics.json") for r in (a, b))
    assert json.dumps(_no_timing(ra), sort_keys=True) == json.dumps(_no_timing(rb), sort_keys=True)
    fa, fb = read_json(a / "funnel.json"), read_json(b / "funnel.json")
    assert fa == fb and fa["seen"]["exclude"]  # the synthetic data have no repeats: auto excludes seen items
    assert (a / "rerank" / "lightgbm" / "model.txt").read_bytes() == (b / "rerank" / "lightgbm" / "model.txt").read_bytes()
    # the served lists too, item for item
    users = thinkrec.load(a).user_ids[:30]
    la = [[i.item_id for i in r.items] for r in thinkrec.load(a).recommend(users=users, k=10)]
    lb = [[i.item_id for i in r.items] for r in thinkrec.load(b).recommend(users=users, k=10)]
    assert la == lb
    # another seed is another run (SASRec's weights and so its metrics move)
    assert not np.isclose(ma["sasrec"]["metrics"]["ndcg@10"], mc["sasrec"]["metrics"]["ndcg@10"], rtol=0, atol=1e-12) \
        or read_json(c / "funnel.json") != fa
