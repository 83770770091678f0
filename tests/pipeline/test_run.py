import json

from typer.testing import CliRunner

from thinkrec.cli import app
from thinkrec.utils.io import read_json

runner = CliRunner()

TINY = [
    "data.options.n_users=150",
    "data.options.n_items=80",
    "data.options.n_impressions=50",
    "sasrec.epochs=2",
    "sasrec.d_model=16",
    "sasrec.n_layers=1",
    "sasrec.max_len=20",
    "eval.bootstrap=50",
    "retrieval.model.d_model=16",
    "retrieval.model.n_heads=2",
    "retrieval.model.ffn=32",
    "retrieval.model.n_enc_layers=1",
    "retrieval.model.n_dec_layers=1",
    "retrieval.model.max_len=20",
    "retrieval.model.n_clusters=4",
    "retrieval.train.epochs=2",
    "retrieval.train.valid_users=40",
    "rerank.model.d_model=16",
    "rerank.model.max_decode=8",
    "rerank.train.epochs=1",
    "rerank.train.evaluator_epochs=1",
    "rerank.train.rl_epochs=1",
    "rerank.train.rollouts=2",
]

LLM_TINY = [
    "llm.max_reasoning_tokens=4", "llm.n_history=3", "llm.lora.r=4", "llm.lora.target_modules=[q_proj,v_proj]",
    "llm.alignment.steps=2", "llm.alignment.batch_size=4", "llm.alignment.max_len=128", "llm.sampling=[target]",
    "llm.n_train_requests=6", "llm.sft.steps=2", "llm.sft.batch_size=2", "llm.rl.steps=1", "llm.rl.prompts_per_step=1",
    "llm.rl.num_generations=2", "llm.rl.max_reasoning_tokens=4", "llm.n_eval=4", "llm.eval_batch_size=4",
]


def _args(out_dir, name="t"):
    args = ["--config", "configs/synthetic.yaml", "--name", name, "--set", f"run.out_dir={out_dir}"]
    for s in TINY:
        args += ["--set", s]
    return args


def test_run_writes_a_complete_run_directory_and_resumes(tmp_path):
    res = runner.invoke(app, ["run", *_args(tmp_path)])
    assert res.exit_code == 0, res.output
    root = tmp_path / "t"
    for rel in ["config.yaml", "metrics.json", "log.txt", "report.md", "sasrec/model.safetensors", "sasrec/history.json",
                "data/meta.json", "data/interactions.parquet", "eval/per_user.parquet", "plots/sasrec_training.png",
                "retrieval/s2gr/model.safetensors", "retrieval/s2gr/lineage.json", "retrieval/tiger/history.json"]:
        assert (root / rel).exists(), rel
    metrics = read_json(root / "metrics.json")["test"]
    assert set(metrics) >= {"popularity", "sasrec", "tiger", "s2gr", "paired_tests"}
    # the preset's rescore_weight null: tuned on the validation subset once per trained model
    assert "rescore weight" in res.output
    for name in ("tiger", "s2gr"):
        tuned = read_json(root / "retrieval" / name / "rescore.json")
        by_weight = tuned["valid_ndcg@10_by_weight"]
        assert len(by_weight) == 8 and by_weight[str(tuned["weight"])] == max(by_weight.values())
    assert 0 <= metrics["sasrec"]["metrics"]["ndcg@10"] <= metrics["sasrec"]["metrics"]["recall@10"] <= 1
    assert "sasrec" in res.output and "ndcg@10" in res.output
    report = (root / "report.md").read_text()
    assert "Test metrics" in report and "paired test" in report
    rr = read_json(root / "rerank" / "metrics.json")
    assert rr["source"] == "impressions" and set(rr["models"]) == {"initial", "dnn", "prm", "dlcm", "seq2slate", "egrerank", "eglr"}
    assert rr["models"]["eglr"]["rl_epochs"] == 1 and "expected_clicks" in rr["models"]["initial"]
    assert "Re-ranking (logged impressions)" in report and "rerank_entropy_by_position.png" in report
    assert (root / "plots" / "rerank_entropy_by_position.png").exists() and (root / "rerank" / "eglr" / "model.safetensors").exists()

    # A second run with the same config reuses the prepared data and the trained model.
    res2 = runner.invoke(app, ["run", *_args(tmp_path)])
    assert res2.exit_code == 0, res2.output
    out2 = res2.output.replace("\n", " ")
    for node in ("data", "sids", "sasrec", "retrieval/s2gr", "retrieval/s2gr/rescore", "rerank/lists", "rerank/eglr"):
        assert f"{node}: up to date" in out2, node
    assert "rescore weight" not in res2.output  # the tuned weight is reused, not re-tuned
    again = read_json(root / "metrics.json")["test"]
    for name in ("sasrec", "tiger", "s2gr"):
        assert again[name]["metrics"] == metrics[name]["metrics"], name

    # train retriever reuses the trained model (same config hash) and reports test metrics
    res6 = runner.invoke(app, ["train", "retriever", *_args(tmp_path), "--model", "tiger"])
    assert res6.exit_code == 0, res6.output
    assert "retrieval/tiger: up to date" in res6.output.replace("\n", " ")
    bad = runner.invoke(app, ["train", "retriever", *_args(tmp_path), "--model", "sasrec"])
    assert bad.exit_code == 2 and "tiger, s2gr" in bad.output

    # a re-ranker over the funnel: the best trained retriever's top-K lists
    res7 = runner.invoke(app, ["train", "reranker", *_args(tmp_path), "--model", "prm", "--set", "rerank.source=funnel"])
    assert res7.exit_code == 0, res7.output
    rr = read_json(root / "rerank" / "metrics.json")
    assert rr["source"] == "funnel" and rr["candidates"] == "merged" and set(rr["models"]) == {"initial", "prm"}
    assert "recall@1" in rr["models"]["prm"] and "re-ranking (funnel)" in res7.output
    bad = runner.invoke(app, ["train", "reranker", *_args(tmp_path), "--model", "lambdamart"])
    assert bad.exit_code == 2 and "eglr" in bad.output

    # stage 4 (GR2) on those funnel lists, with a tiny random Qwen3 loaded by path like any HF checkpoint
    from tests.llm.fixtures import save_tiny_llm

    llm_args = ["--set", "rerank.source=funnel", "--set", "rerank.models=[initial,prm]",
                "--set", f"llm.model={save_tiny_llm(tmp_path / 'tiny-qwen3')}"]
    for s in LLM_TINY:
        llm_args += ["--set", s]
    res8 = runner.invoke(app, ["train", "llm-reranker", *_args(tmp_path), *llm_args])
    assert res8.exit_code == 0, res8.output
    llm = read_json(root / "llm" / "metrics.json")
    # the programmatic teacher's own ranking is the ceiling row; every phase is also answered on validation lists
    assert set(llm["metrics"]) == {"pre-rank", "teacher", "alignment", "sft-target", "rl"}
    assert all("valid" in llm["metrics"][p] for p in ("pre-rank", "alignment", "sft-target", "rl"))
    assert "pre-rank order = " in res8.output and "LLM order used by the funnel" in res8.output
    assert all(m["malformed"] == 0 for m in llm["metrics"].values()) and llm["traces"]["target"]["accepted"] > 0
    assert "LLM re-ranker" in res8.output and "LLM re-ranker (GR2" in (root / "report.md").read_text()
    assert (root / "llm" / "adapter" / "adapter_config.json").exists()
    res9 = runner.invoke(app, ["run", "--with-llm", *_args(tmp_path), *llm_args])
    assert res9.exit_code == 0 and "llm: up to date" in res9.output.replace("\n", " "), res9.output
    assert "LLM" in (root / "report.md").read_text() and read_json(root / "funnel.json")["llm"] == llm["deploy"]

    # recommend with explanations from the trained S²GR, through thinkrec.load
    res4 = runner.invoke(app, ["recommend", "--run", str(root), "--user", "u00003", "--retriever", "s2gr", "-k", "5",
                               "--explain", "--no-rerank"])
    assert res4.exit_code == 0, res4.output
    assert "t1 →" in res4.output and "cluster" in res4.output and "agreement" in res4.output
    res5 = runner.invoke(app, ["recommend", "--run", str(root), "--user", "nobody"])
    assert res5.exit_code == 2 and "unknown user" in res5.output
    res10 = runner.invoke(app, ["recommend", "--run", str(root), "--users", "all", "--out", str(tmp_path / "recs.parquet")])
    assert res10.exit_code == 0, res10.output
    import polars as pl

    recs = pl.read_parquet(tmp_path / "recs.parquet")
    assert recs["user_id"].n_unique() == 150 and recs.group_by("user_id").len()["len"].max() == 10

    # evaluate on an existing run directory
    res3 = runner.invoke(app, ["evaluate", "--run", str(root)])
    assert res3.exit_code == 0, res3.output


def test_cli_errors_are_clear(tmp_path):
    res = runner.invoke(app, ["run", "--config", "configs/synthetic.yaml", "--set", "sasrec.dmodel=3"])
    assert res.exit_code == 2 and "sasrec.dmodel" in res.output
    res = runner.invoke(app, ["data", "stats", "--dataset", "no-such-dataset"])
    assert res.exit_code == 2 and "unknown dataset" in res.output
    bad = tmp_path / "seq.txt"
    bad.write_text("1 1 2 3\n2 4 x 6\n")
    res = runner.invoke(app, ["data", "stats", "--dataset", str(bad)])
    assert res.exit_code == 2 and "line 2" in res.output, res.output


def test_data_stats_and_prepare(tmp_path):
    res = runner.invoke(app, ["data", "stats", "--dataset", "synthetic"])
    assert res.exit_code == 0 and "interactions" in res.output
    out = tmp_path / "prep"
    res = runner.invoke(app, ["data", "prepare", "--dataset", "synthetic", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stats"]["users"] > 0
    res = runner.invoke(app, ["data", "stats", "--dataset", str(out)])
    assert res.exit_code == 0 and f"{meta['stats']['interactions']:,}" in res.output


def test_models_lists_every_registry():
    from thinkrec.data.registry import FORMATS
    from thinkrec.llm.teacher import TEACHERS
    from thinkrec.pipeline.scorers import SCORERS
    from thinkrec.rerank.models import RERANKERS
    from thinkrec.tokenize.quantizers import QUANTIZERS

    res = runner.invoke(app, ["models"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for reg in (SCORERS, RERANKERS, QUANTIZERS, TEACHERS, FORMATS):
        for e in reg.entries():
            assert e.name in res.output and e.description[:20] in res.output, e.name
