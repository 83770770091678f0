"""Configs are validated before any work: every field's range or choices is declared next to it (``spec``), a run
lists every error with its dotted name at once, and what the data must hold for the requested stages is checked
right after it loads — before SASRec trains."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from thinkrec.cli import app
from thinkrec.data.synthetic import SyntheticConfig, generate
from thinkrec.errors import ConfigError, DataRequirementError, UserError
from thinkrec.pipeline.config import RunConfig, check_run_config, load_run_config
from thinkrec.pipeline.preflight import data_problems
from thinkrec.utils.config import (
    config_hash,
    constraint_of,
    device_error,
    spec,
    to_dict,
    validate,
)

runner = CliRunner()
PRESET = "configs/synthetic.yaml"

# (--set override, the dotted name its error must carry); each row is wrong on its own on top of the preset
BAD_VALUES = [
    ("retrieval.beam=-3", "retrieval.beam"),
    ("retrieval.beam=0", "retrieval.beam"),
    ("retrieval.train.eval_beam=0", "retrieval.train.eval_beam"),
    ("retrieval.train.lr=0", "retrieval.train.lr"),
    ("retrieval.models=[tiger,gpt]", "retrieval.models[1]"),
    ("retrieval.model.dropout=-0.1", "retrieval.model.dropout"),
    ("retrieval.model.input_mode=token", "retrieval.model.input_mode"),
    ("retrieval.model.n_heads=3", "retrieval.model.n_heads"),  # does not divide d_model 64
    ("retrieval.model.item_loss_weight=0", "retrieval.rescore_weight"),  # the preset tunes re-scoring (null)
    ("retrieval.rescore_weight=-1", "retrieval.rescore_weight"),
    ("candidates.k=0", "candidates.k"),
    ("candidates.k=5000", "candidates.k"),
    ("candidates.per_source=-1", "candidates.per_source"),
    ("candidates.quotas={sasrec: -1}", "candidates.quotas.sasrec"),
    ("candidates.quotas={bm25: 1}", "candidates.quotas"),  # not a source of this run
    ("candidates.sources=[sasrec,bm25]", "candidates.sources[1]"),
    ("candidates.cooc.decay=2", "candidates.cooc.decay"),
    ("eval.ks=[0,10]", "eval.ks[0]"),
    ("eval.ks=[]", "eval.ks"),
    ("eval.bootstrap=0", "eval.bootstrap"),
    ("sasrec.dropout=1.0", "sasrec.dropout"),
    ("sasrec.lr=0", "sasrec.lr"),
    ("sasrec.loss=bpr", "sasrec.loss"),
    ("sasrec.n_heads=3", "sasrec.n_heads"),
    ("sasrec.gbce_t=1.5", "sasrec.gbce_t"),
    ("sasrec.negative_sampling=hard", "sasrec.negative_sampling"),
    ("sasrec.epochs=many", "sasrec.epochs"),  # a wrong type
    ("sasrec.seed=3", "sasrec.seed"),  # derived from run.seed
    ("run.device=gpu", "run.device"),
    ("run.device=cuda:x", "run.device"),
    ("run.seed=-1", "run.seed"),
    ("run.threads=0", "run.threads"),
    ("data.split=random", "data.split"),
    ("data.format=xls", "data.format"),
    ("data.valid_frac=0", "data.valid_frac"),
    ("data.options.n_users=0", "data.options"),  # the synthetic generator's own checks
    ("data.options.bogus=1", "data.options.bogus"),
    ("stages=[data,train]", "stages[1]"),
    ("tokenize.method=pq", "tokenize.method"),
    ("tokenize.collision=ignore", "tokenize.collision"),
    ("tokenize.quantizer.codebook_size=1", "tokenize.quantizer.codebook_size"),
    ("tokenize.quantizer.bogus=1", "tokenize.quantizer.bogus"),
    ("tokenize.embed_batch_size=0", "tokenize.embed_batch_size"),
    ('tokenize.template="{title"', "tokenize.template"),
    ("rerank.models=[initial,lambdamart]", "rerank.models[1]"),
    ("rerank.source=clicks", "rerank.source"),
    ("rerank.candidates=bm25", "rerank.candidates"),
    ("rerank.compare_frac=0.95", "rerank.compare_frac"),  # + holdout_frac 0.1 leaves no training lists
    ("rerank.train.rollouts=1", "rerank.train.rollouts"),
    ("rerank.train.reward=ctr", "rerank.train.reward"),
    ("rerank.train.grad_clip=0", "rerank.train.grad_clip"),
    ("rerank.model.entropy_quantile=1.5", "rerank.model.entropy_quantile"),
    ("rerank.model.n_heads=3", "rerank.model.n_heads"),  # does not divide d_model 32
    ("llm.sampling=[]", "llm.sampling"),
    ("llm.sampling=[target,guess]", "llm.sampling[1]"),
    ("llm.rl_from=reject", "llm.rl_from"),  # the preset samples target traces only
    ("llm.teacher.kind=gpt", "llm.teacher.kind"),
    ("llm.teacher.kind=openai", "llm.teacher.model"),  # an OpenAI teacher needs the served model's name
    ("llm.rl.num_generations=1", "llm.rl.num_generations"),
    ("llm.rl.epsilon_high=0.1", "llm.rl.epsilon_high"),
    ("llm.lora.dropout=1", "llm.lora.dropout"),
    ("llm.dtype=fp8", "llm.dtype"),
    ("llm.sft.lr=0", "llm.sft.lr"),
]


@pytest.mark.parametrize(("override", "dotted"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_its_field(override: str, dotted: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(PRESET, [override])
    assert len(info.value.errors) == 1, info.value.errors
    (error,) = info.value.errors
    assert error.startswith(f"{dotted}: "), error
    assert str(info.value).startswith(f"{PRESET}: {dotted}: ")


def test_every_error_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(PRESET, ["retrieval.beam=-3", "sasrec.lr=0", "run.device=tpu", "sasrec.dmodel=8",
                                 "eval.ks=[5,0]"])
    names = [e.split(": ")[0] for e in info.value.errors]
    assert sorted(names) == sorted(["retrieval.beam", "sasrec.lr", "run.device", "sasrec.dmodel", "eval.ks[1]"])
    text = str(info.value)
    assert text.startswith(f"{PRESET}: 5 config errors:") and all(n in text for n in names)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_run_with_a_bad_beam_fails_at_once_without_artifacts(tmp_path: Path) -> None:
    args = ["run", "--config", PRESET, "--set", f"run.out_dir={tmp_path}", "--name", "t"]
    runner.invoke(app, ["run", "--config", PRESET, "--set", "sasrec.lr=0"])  # warm the imports
    t = time.perf_counter()
    res = runner.invoke(app, [*args, "--set", "retrieval.beam=-3", "--set", "candidates.k=0"])
    elapsed = time.perf_counter() - t
    assert res.exit_code == 2, res.output
    assert elapsed < 1.0, elapsed
    assert "retrieval.beam: must be ≥ 1 (got -3)" in res.output and "candidates.k" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "t").exists()  # nothing written: no run directory, no stage artifacts


def test_library_runs_are_checked_before_any_work(tmp_path: Path) -> None:
    from thinkrec.pipeline.run import run_pipeline

    cfg = load_run_config(PRESET, [f"run.out_dir={tmp_path}", "run.name=lib"])
    cfg.retrieval.beam = -3  # set in code, past load_run_config
    cfg.tokenize.embed_npy = str(tmp_path / "missing.npy")
    with pytest.raises(ConfigError) as info:
        run_pipeline(cfg, log=lambda m: None)
    assert [e.split(": ")[0] for e in info.value.errors] == ["tokenize.embed_npy", "retrieval.beam"]
    with pytest.raises(ConfigError, match=r"stages: unknown stage\(s\) \['train'\]"):
        run_pipeline(load_run_config(PRESET, [f"run.out_dir={tmp_path}"]), ["data", "train"], log=lambda m: None)
    assert not (tmp_path / "lib").exists()


def test_paths_that_must_exist_are_checked_for_runs_only(tmp_path: Path) -> None:
    cfg = load_run_config(PRESET, [f"data.dataset={tmp_path / 'nowhere'}", "tokenize.embed_model=/no/encoder"])
    # reading a config back (a trained run's) does not touch the file system; a run that works does
    assert check_run_config(cfg, ["evaluate", "report"]) is cfg
    with pytest.raises(ConfigError) as info:
        check_run_config(cfg)
    assert [e.split(": ")[0] for e in info.value.errors] == ["data.dataset", "tokenize.embed_model"]
    with pytest.raises(ConfigError, match=r"data\.dataset: no such file or folder to load as 'csv'"):
        check_run_config(load_run_config(PRESET, ["data.dataset=nowhere.csv", "data.format=csv"]))
    with pytest.raises(ConfigError, match=r"data\.data_root: no such file or folder"):
        check_run_config(load_run_config(PRESET, [f"data.data_root={tmp_path / 'none'}"]))


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates(path: Path) -> None:
    cfg = load_run_config(path)  # the LLM presets too: a base: run config plus the llm: section
    if cfg.run.device != "cpu":  # a GPU preset: its values are checked, the device only where it exists
        cfg = load_run_config(path, ["run.device=cpu"])
    assert check_run_config(cfg) is cfg  # values, combinations and (named datasets) paths
    if path.name.startswith("llm_"):
        beauty = load_run_config("configs/beauty.yaml")
        assert cfg.data == beauty.data and cfg.retrieval == beauty.retrieval and cfg.rerank == beauty.rerank
        assert cfg.llm.model == yaml.safe_load(path.read_text())["llm"]["model"]


def test_a_base_config_is_merged_under_the_file_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("run: {name: a, seed: 3}\nsasrec: {d_model: 32, n_layers: 1}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nrun: {name: b}\nsasrec: {d_model: 16}\n")
    cfg = load_run_config(tmp_path / "sub" / "b.yaml", ["sasrec.n_layers=2"])
    assert (cfg.run.name, cfg.run.seed, cfg.sasrec.d_model, cfg.sasrec.n_layers) == ("b", 3, 16, 2)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_run_config(tmp_path / "loop.yaml")
    (tmp_path / "gone.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: config file not found \(the base of .*gone\.yaml\)"):
        load_run_config(tmp_path / "gone.yaml")


def test_the_llm_preset_loads_through_the_cli(monkeypatch) -> None:
    # what `thinkrec train llm-reranker --config configs/llm_beauty.yaml` does before any work
    import thinkrec.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_run", lambda cfg, stages=None, **kw: seen.update(cfg=cfg, stages=stages) or Path("x"))
    res = CliRunner().invoke(app, ["train", "llm-reranker", "--config", "configs/llm_beauty.yaml"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].data.dataset == "beauty" and seen["cfg"].llm.model == "gemma3-270m" and "llm" in seen["stages"]


def test_constraints_leave_the_config_hash_and_dict_alone() -> None:
    @dataclass
    class Plain:
        beam: int = 20
        device: str = "cpu"

    @dataclass
    class Declared:
        beam: int = spec(20, ge=1, doc="beams kept")
        device: str = spec("cpu", check=device_error)

    assert to_dict(Declared()) == to_dict(Plain()) == {"beam": 20, "device": "cpu"}
    assert config_hash(Declared()) == config_hash(Plain())
    assert config_hash(Declared(beam=5)) == config_hash(Plain(beam=5)) != config_hash(Declared())
    c = constraint_of(Declared, "beam")
    assert c is not None and c.ge == 1 and c.doc == "beams kept"
    assert validate(Declared(beam=0, device="cuda:1")) == ["beam: must be ≥ 1 (got 0)"]
    assert validate(Declared(device="tpu"), "x") == ["x.device: must be a device: cpu, cuda, cuda:N, mps (got 'tpu')"]
    assert config_hash(RunConfig()) == config_hash(load_run_config(None))


def test_spec_messages_and_elementwise_checks() -> None:
    @dataclass
    class C:
        p: float = spec(0.5, ge=0.0, le=1.0)
        drop: float = spec(0.1, ge=0.0, lt=1.0)
        lr: float = spec(1e-3, gt=0.0)
        ks: list[int] = spec(default_factory=lambda: [1], ge=1, min_len=1)
        weights: dict[str, float] = spec(default_factory=dict, ge=0.0)
        name: str = spec("a", choices=lambda: ("a", "b"))
        opt: int | None = spec(None, ge=1)

        def _checks(self) -> list[tuple[str, str]]:
            return [("p", "must not equal drop")] if self.p == self.drop else []

    assert validate(C()) == []
    assert validate(C(p=float("nan"))) == ["p: must be in [0, 1] (got nan)"]
    assert validate(C(lr=float("inf"))) == ["lr: must be > 0 (got inf)"]  # a bounded number is finite
    assert validate(C(opt=10**400)) == []  # an int beyond a float's range is compared exactly
    errors = validate(C(p=2, drop=1, lr=0, ks=[3, 0], weights={"a": -1}, name="c", opt=0), "s")
    assert errors == ["s.p: must be in [0, 1] (got 2)", "s.drop: must be in [0, 1) (got 1)", "s.lr: must be > 0 (got 0)",
                      "s.ks[1]: must be ≥ 1 (got 0)", "s.weights.a: must be ≥ 0 (got -1)",
                      "s.name: must be one of a, b (got 'c')", "s.opt: must be ≥ 1 (got 0)"]
    assert validate(C(ks=[])) == ["ks: must hold at least one entry (got [])"]
    assert validate(C(p=0.3, drop=0.3)) == ["p: must not equal drop"]


def test_serving_configs_are_validated() -> None:
    from thinkrec.serve.app import ServeConfig
    from thinkrec.serve.batcher import BatcherConfig

    with pytest.raises(ConfigError, match=r"serve\.max_batch: must be ≥ 1 \(got 0\)"):
        BatcherConfig(max_batch=0).check()
    errors = validate(ServeConfig(batching=BatcherConfig(window_ms=-1), per_source=0, max_body_bytes=0), "serve")
    assert [e.split(": ")[0] for e in errors] == ["serve.batching.window_ms", "serve.max_body_bytes", "serve.per_source"]


# ---------------------------------------------------------------------------------------------- the data pre-flight
def _tiny(**kw):
    return generate(SyntheticConfig(**{"n_users": 150, "n_items": 80, "n_impressions": 50, **kw}))


def test_a_catalogue_without_text_fails_before_sasrec_trains(tmp_path: Path) -> None:
    ds = _tiny()
    ds.items = ds.items.with_columns(pl.lit("").alias("title"), pl.lit("").alias("brand"), pl.lit("").alias("description"),
                                     pl.lit([], dtype=pl.List(pl.Utf8)).alias("categories"))
    ds.name = "no-text"
    ds.save(tmp_path / "no-text")
    res = runner.invoke(app, ["run", "--config", PRESET, "--set", f"data.dataset={tmp_path / 'no-text'}",
                              "--set", f"run.out_dir={tmp_path / 'runs'}", "--name", "t"])
    assert res.exit_code == 2, res.output
    assert "dataset 'no-text': 1 distinct item texts for 80 items" in res.output and "Traceback" not in res.output
    root = tmp_path / "runs" / "t"
    assert not (root / "sasrec").exists() and not (root / "popularity").exists()
    assert not (root / "stages" / "data.json").exists()  # the data stage did not finish either
    # without the stages that need Semantic IDs the same data runs (here: only the data stage)
    res = runner.invoke(app, ["run", "--config", PRESET, "--set", f"data.dataset={tmp_path / 'no-text'}",
                              "--set", f"run.out_dir={tmp_path / 'runs'}", "--name", "t", "--set", "stages=[data]"])
    assert res.exit_code == 0, res.output


def test_data_problems_name_the_dataset_and_what_is_missing() -> None:
    ds = _tiny()
    cfg = load_run_config(PRESET)
    assert data_problems(ds, cfg, cfg.stages) == []
    # impressions asked for, none logged
    no_imps = _tiny(n_impressions=0)
    cfg_imps = load_run_config(PRESET, ["rerank.source=impressions"])
    (p,) = data_problems(no_imps, cfg_imps, ["data", "rerank"])
    assert "'synthetic' has no logged impressions (rerank.source=impressions)" in p
    assert data_problems(no_imps, cfg, ["data", "rerank"]) == []  # auto: re-ranks the funnel's lists instead
    # impressions without a single click
    ds_noclick = _tiny()
    ds_noclick.impressions = ds_noclick.impressions.with_columns(
        pl.col("clicks").list.eval(pl.element() * 0).cast(pl.List(pl.Int8)))
    assert any("no impression has a click" in p for p in data_problems(ds_noclick, cfg, ["rerank"]))
    # more codes per level than items (k-means needs a point per code); reassign with too few SIDs
    big = load_run_config(PRESET, ["tokenize.quantizer.codebook_size=128"])
    (p,) = data_problems(ds, big, ["tokenize"])
    assert "80 items, fewer than the 128 codes per level" in p and "codebook_size" in p
    small = load_run_config(PRESET, ["tokenize.collision=reassign", "tokenize.quantizer.codebook_size=4",
                                     "tokenize.quantizer.n_levels=3"])
    assert any("do not fit into 4^3 = 64 Semantic IDs" in p for p in data_problems(ds, small, ["tokenize"]))
    assert data_problems(ds, small, ["data", "sasrec"]) == []  # no Semantic IDs asked for


def test_precomputed_vectors_must_have_a_row_per_item(tmp_path: Path) -> None:
    import numpy as np

    ds = _tiny()
    np.save(tmp_path / "v.npy", np.zeros((ds.n_items - 1, 8), np.float32))
    cfg = load_run_config(PRESET, [f"tokenize.embed_npy={tmp_path / 'v.npy'}"])
    (p,) = data_problems(ds, cfg, ["tokenize"])
    assert "v.npy: expected an array of shape [n_items=80, d] for dataset 'synthetic', got [79, 8]" in p


def test_too_short_sequences_leave_no_examples() -> None:
    ds = _tiny()
    ds.interactions = ds.interactions.group_by("user", maintain_order=True).head(1)  # one interaction per user
    cfg = load_run_config(PRESET)
    problems = data_problems(ds, cfg, cfg.stages)
    assert any("no validation examples" in p for p in problems) and any("no test examples" in p for p in problems)
    with pytest.raises(DataRequirementError, match="lacks what the requested stages need"):
        from thinkrec.pipeline.preflight import check_data

        check_data(ds, cfg, cfg.stages)


def test_a_device_this_machine_lacks_is_refused_before_work(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_run_config(PRESET, ["run.device=cuda:1"])  # a valid name: a config is read back on any machine
    with pytest.raises(ConfigError, match=r"run\.device: CUDA is not available on this machine \(got 'cuda:1'\)"):
        check_run_config(cfg)
    with pytest.raises(ConfigError, match=r"run\.device: CUDA is not available"):
        check_run_config(cfg, ["evaluate", "report"])  # evaluation runs on the device too
