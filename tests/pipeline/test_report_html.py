"""The HTML run report: self-contained (inline PNGs and CSS, no external URL), every stage's figures as the report
formats them, every string from the run directory escaped; written by the pipeline's ``report`` node.

Two run directories: one written by hand with every file the report reads (instant, and it plants ``<script>``
in names), and a tiny real pipeline run (data, popularity, SASRec, two re-rankers, evaluate, report), trained once
per session and shared with ``tests/test_cli_output.py``."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thinkrec.pipeline.report_html import write_html_report
from thinkrec.utils.io import read_json, write_json

EVIL_MODEL = "<script>alert('model')</script>"
EVIL_DATASET = "<script>alert(\"dataset\")</script>"
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr")


# ---------------------------------------------------------------------------------------------- fixtures
def _metrics(rng: np.random.Generator) -> dict[str, Any]:
    m = {k: float(rng.uniform(0.01, 0.6)) for k in METRICS}
    return {"metrics": m, "ci95": {k: [v * 0.8, v * 1.2] for k, v in m.items()}}


def _paired(rng: np.random.Generator, n: int = 150) -> dict[str, Any]:
    d = float(rng.uniform(-0.1, 0.2))
    return {"mean_a": 0.2, "mean_b": 0.2 - d, "diff": d, "diff_low": d - 0.03, "diff_high": d + 0.03,
            "p_bootstrap": float(rng.uniform(0, 1)), "p_ttest": float(rng.uniform(0, 1e-3)),
            "p_wilcoxon": float(rng.uniform(0, 1e-2)), "n": n}


def make_run_dir(root: Path, model: str = EVIL_MODEL, dataset: str = EVIL_DATASET, with_llm: bool = True) -> Path:
    """A run directory with every file the reports read, in the shapes the pipeline writes (values random)."""
    from thinkrec.tokenize.report import plot_code_usage

    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    singles = {name: {**_metrics(rng), "users": 150, "users_per_s": float(rng.uniform(50, 2e5))}
               for name in ("popularity", "sasrec", "tiger", model)}
    funnel = {"final": "eglr", "why": f"best ndcg@10 on the comparison slice: eglr 0.2000, {model} 0.1000",
              "best_single": "sasrec", "models": {"candidates": _metrics(rng), "eglr": _metrics(rng)},
              "paired_tests": {f"funnel_vs_{n}": _paired(rng) for n in singles}, "metric": "ndcg@10"}
    test = {**singles, "paired_tests": {f"sasrec_vs_{n}": _paired(rng) for n in singles if n != "sasrec"},
            "funnel": funnel}
    write_json(root / "eval" / "metrics.json", test)
    write_json(root / "metrics.json", {"dataset": dataset, "split": "loo", "test": test})
    write_json(root / "funnel.json", {
        "retriever": "merged", "retriever_why": f"merged candidates of sasrec, tiger, {model}", "reranker": "eglr",
        "reranker_why": "best ndcg@10 on the comparison slice", "sources": ["sasrec", "tiger", model], "final": "eglr",
        "comparison": {"sasrec": 0.11, "tiger": 0.09, model: 0.05, "candidates": 0.12, "eglr": 0.2, "prm": 0.1},
        "lost": [f"rerank/prm: ndcg@10 0.1000 < its input (the merge order) 0.1200 on the comparison slice <{model}>"],
        "final_why": "best ndcg@10 on the comparison slice (validation lists held out): eglr 0.2000",
        "llm": None, "llm_why": "not used: measured on test lists only", "validation": {"sasrec": 0.11}})
    write_json(root / "stages" / "data.json", {"wall_s": 0.1, "info": {"stats": {
        "dataset": dataset, "users": 150, "items": 80, "interactions": 1913, "seq_len_min": 5, "seq_len_mean": 12.753,
        "seq_len_max": 41, "density": 0.1594, "has_ratings": False}}})
    history = [{"epoch": e, "loss": 5.0 - e, "train_s": 0.1, "valid_ndcg@10": 0.02 * e, "best": True} for e in (1, 2, 3)]
    write_json(root / "sasrec" / "history.json", history)
    write_json(root / "sasrec" / "train_metrics.json", {"epochs": 3, "s_per_epoch": 0.5, "best_valid_ndcg@10": 0.06})
    write_json(root / "stages" / "sasrec.json", {"wall_s": 2.5, "info": {}})
    write_json(root / "retrieval" / "tiger" / "history.json", [{**h, "rec": 1.1, "item": 4.3} for h in history])
    write_json(root / "retrieval" / "tiger" / "train_metrics.json",
               {"epochs": 3, "train_s": 1.5, "samples_per_s": 6000.0, "best_valid_ndcg@10": 0.0574})
    write_json(root / "retrieval" / "tiger" / "rescore.json",
               {"weight": 8.0, "valid_ndcg@10_by_weight": {"0.0": 0.05, "8.0": 0.077}, "beam": 20, "tuned": True})
    levels = [{"level": lv, "codebook_size": 32, "used": 32 - lv, "utilization": (32 - lv) / 32, "entropy_bits": 4.5,
               "max_entropy_bits": 5.0, "perplexity": 22.6, "max_share": 0.06} for lv in (1, 2, 3)]
    write_json(root / "sids" / "report.json", {
        "n_items": 80, "n_levels": 3, "codebook_size": [32, 32, 32], "levels": levels, "utilization_mean": 0.9375,
        "n_unique_tuples": 78, "unique_before_dedup": 0.975, "items_alone_share": 0.95, "max_items_per_tuple": 2,
        "fit_s": 0.55, "collision_strategy": "dedup", "sid_length": 4, "n_reassigned": 0, "dedup_level_size": 2,
        "recon_mse": 0.000141, "recon_rel": 0.0544, "method": "rqkmeans", "embed_s": 6.25, "embed_dim": 384,
        "semantic_l1": {"purity": 0.4625, "purity_random": 0.4025, "nmi": 0.8455, "nmi_random": 0.8232}})
    plot_code_usage(rng.integers(0, 32, size=(80, 3)), 32, root / "sids" / "code_usage.png")
    steps = [3.0, 3.0, 2.0, 1.0, 0.0, 0.0]
    profiles = {"eglr": {"entropy_first": [2.9, 2.8, 2.7, 2.6, 2.5, 2.4], "entropy_final": [2.5, 2.5, 2.4, 2.4, 2.4, 2.4],
                         "steps": steps, "temp_select": [0.5] * 6, "temp_reason_by_step": [1.9, 2.0, 2.1]}}
    rerank_models = {name: {"ndcg@5": float(rng.uniform(0, 1)), "ndcg@10": float(rng.uniform(0, 1)),
                            "map@5": float(rng.uniform(0, 1)), "map@10": float(rng.uniform(0, 1)),
                            "recall@1": float(rng.uniform(0, 1)), "recall@5": float(rng.uniform(0, 1)),
                            "evaluator_score": float(rng.uniform(1, 10)), "latency_ms": float(rng.uniform(1, 80)),
                            "train_s": float(rng.uniform(0, 10)), "rl_epochs": 1.0}
                     for name in ("initial", "prm", "eglr", model)}
    rerank_models["eglr"]["reasoning_steps_per_list"] = float(sum(steps))
    write_json(root / "rerank" / "metrics.json", {
        "source": "funnel", "candidates": "merged", "n_lists": {"train": 40, "valid": 5, "test": 150},
        "models": rerank_models, "valid": {n: {"ndcg@5": 0.1, "ndcg@10": 0.2} for n in rerank_models},
        "profiles": profiles, "paired_tests_ndcg@5": {f"eglr_vs_{n}": _paired(rng) for n in rerank_models if n != "eglr"},
        "plots": ["plots/rerank_entropy_by_position.png"]})  # not on disk: the HTML report draws it from profiles
    write_json(root / "rerank" / "eglr" / "history.json",
               [{"stage": "supervised", "epoch": 1, "loss": 4.6, "valid_ndcg@5": 0.1},
                {"stage": "rl", "epoch": 1, "reward": 9.4, "valid_ndcg@5": 0.12}])
    write_json(root / "candidates" / "info.json", {
        "sources": ["sasrec", model], "k": 50, "per_source": 50,
        "test": {"requests": 150, "recall@50": 0.75, "recall@10": 0.2, "source_recall": {"sasrec": 0.6, model: 0.7},
                 "source_recall@10": {"sasrec": 0.07, model: 0.3}, "source_recall_in_merged": {"sasrec": 0.44, model: 0.5}}})
    if with_llm:
        phases = ("pre-rank", "alignment", "sft-target", "rl")
        llm = {name: {"recall@1": float(rng.uniform(0, 1)), "recall@5": float(rng.uniform(0, 1)),
                      "ndcg@5": float(rng.uniform(0, 1)), "malformed": 0, "n": 16, "wall_s": 3.2} for name in phases}
        write_json(root / "llm" / "metrics.json", {
            "model": f"models/{model}", "eval_lists_with_target": 16, "coverage": 0.5, "metrics": llm,
            "metrics_all_lists": {n: {k: m[k] * 0.5 for k in ("recall@1", "recall@5", "ndcg@5")} for n, m in llm.items()},
            "traces": {"target": {"teacher": f"programmatic {model}", "accepted": 30, "acceptance_rate": 0.94,
                                  "tries_per_sample": 1.1, "malformed": 0}},
            "timings": {"load_s": 4.0, "alignment_s": 30.5, "rl_s": 60.1}})
    write_json(root / "timings.json", {"data": 0.09, "sasrec": 2.1, "rerank": 19.87, "evaluate": 4.45, "report": 0.4})
    return root


@pytest.fixture
def hand_run(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path / "evil")


_TINY: dict[str, Path] = {}

TINY_STAGES = ["data", "popularity", "sasrec", "rerank", "evaluate", "report"]


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, int]]]:
    """A tiny real run (trained once per session) and the progress events it reported."""
    if "root" not in _TINY:
        from tests.pipeline.test_run import TINY
        from thinkrec.pipeline.config import load_run_config
        from thinkrec.pipeline.run import run_pipeline

        out = tmp_path_factory.mktemp("tiny-run")
        cfg = load_run_config("configs/synthetic.yaml", [*TINY, f"run.out_dir={out}", "run.name=tiny",
                                                         "rerank.models=[initial,dnn]"])
        events: list[tuple[str, int, int]] = []
        _TINY["root"] = run_pipeline(cfg, TINY_STAGES, log=lambda m: None, progress=lambda *e: events.append(e))
        _TINY["events"] = events  # type: ignore[assignment]
    return _TINY["root"], _TINY["events"]  # type: ignore[return-value]


@pytest.fixture
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, int]]]:
    return tiny_run(tmp_path_factory)


# ---------------------------------------------------------------------------------------------- checks
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictParser(HTMLParser):
    """Collects tags, their attributes and the text; records any closing tag that does not match."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> StrictParser:
    p = StrictParser()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    return p


def check_self_contained(text: str) -> StrictParser:
    from PIL import Image

    assert text.startswith("<!DOCTYPE html>")
    p = parse(text)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert not [t for t, a in p.tags if t in ("script", "link", "iframe", "object")]
    images = [a["src"] for t, a in p.tags if t == "img"]
    assert images and all(src and src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        Image.open(io.BytesIO(png)).verify()
    return p


def f4(v: float) -> str:
    return f"{v:.4f}"


def assert_eval_figures(text: str, test: dict[str, Any]) -> None:
    """Every stage's test metric and CI in ``eval/metrics.json``, as the report writes them (4 decimals)."""
    for name, r in test.items():
        if name in ("paired_tests", "funnel"):
            continue
        for k, v in r["metrics"].items():
            lo, hi = r["ci95"][k]
            assert f4(v) in text and f"[{f4(lo)}, {f4(hi)}]" in text, (name, k)
    for pair, t in test.get("paired_tests", {}).items():
        assert f"{t['diff']:+.4f}" in text and f"[{t['diff_low']:+.4f}, {t['diff_high']:+.4f}]" in text, pair
        assert f"{t['p_ttest']:.4g}" in text and f"{t['p_wilcoxon']:.4g}" in text, pair
    funnel = test.get("funnel")
    if funnel:
        for name, r in funnel["models"].items():
            for k, v in r["metrics"].items():
                assert f4(v) in text, ("funnel", name, k)
                if k in r.get("ci95", {}):
                    assert f"[{f4(r['ci95'][k][0])}, {f4(r['ci95'][k][1])}]" in text, ("funnel", name, k)
        for pair, t in funnel["paired_tests"].items():
            assert f"{t['diff']:+.4f}" in text and f"{t['p_bootstrap']:.4g}" in text, pair


# ---------------------------------------------------------------------------------------------- tests
def test_html_report_is_self_contained_and_has_every_stage(hand_run: Path) -> None:
    out = write_html_report(hand_run)
    assert out == hand_run / "report.html"
    text = out.read_text()
    p = check_self_contained(text)
    assert len([t for t, _ in p.tags if t == "img"]) >= 6  # code usage, SASRec, TIGER, entropy + steps, timings, ...
    assert not [f for f in hand_run.iterdir() if f.name.startswith(".report.html")]  # the atomic write's temp file
    assert "could not be rendered" not in text

    assert_eval_figures(text, read_json(hand_run / "eval" / "metrics.json"))
    rr = read_json(hand_run / "rerank" / "metrics.json")
    for name, m in rr["models"].items():
        for k in ("ndcg@5", "ndcg@10", "map@5", "recall@1", "evaluator_score", "latency_ms"):
            assert f4(m[k]) in text, (name, k)
    llm = read_json(hand_run / "llm" / "metrics.json")
    for m in llm["metrics"].values():
        assert all(f4(m[k]) in text for k in ("recall@1", "recall@5", "ndcg@5"))
    for stage, secs in read_json(hand_run / "timings.json").items():
        assert f"{secs:.1f}" in text and stage in text
    for figure in ("97.50%", "rqkmeans", "0.4625 (0.4025)", "max items per tuple"):  # the SID report
        assert figure in text, figure

    # the final list and why come first, the lost stages before everything else (after the table of contents)
    body = html.unescape(re.sub(r"<[^>]+>", "", text.split("</nav>", 1)[1]))
    lost = body.index("Stages that lost to their input")
    assert lost < body.index("The final list") < body.index("Data") < body.index("Test metrics of every stage")
    assert body.index("rerank/prm: ndcg@10 0.1000 < its input") > lost
    assert re.search(r"Served:\s*eglr", body)


def test_every_string_from_the_run_directory_is_escaped(hand_run: Path) -> None:
    text = write_html_report(hand_run).read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;model&#x27;)&lt;/script&gt;" in text
    assert "&lt;script&gt;alert(&quot;dataset&quot;)&lt;/script&gt;" in text
    body = "".join(parse(text).text)  # and what a reader sees is the name as it is
    assert EVIL_MODEL in body and EVIL_DATASET in body


def test_sections_appear_only_for_files_that_exist(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    text = write_html_report(root).read_text()
    parse(text)
    assert "<h2" not in text and "<img" not in text
    write_json(root / "timings.json", {"data": 1.25})
    text = write_html_report(root).read_text()
    check_self_contained(text)
    assert "Stage wall times" in text and "Re-ranking" not in text and "LLM re-ranker" not in text

    root = make_run_dir(tmp_path / "no-llm", model="m", dataset="d", with_llm=False)
    text = write_html_report(root).read_text()
    assert "LLM re-ranker" not in text and "Re-ranking" in text


def test_a_malformed_file_costs_its_section_only(hand_run: Path) -> None:
    write_json(hand_run / "llm" / "metrics.json", {"model": "<b>x</b>", "metrics": {"rl": {}}})
    text = write_html_report(hand_run).read_text()
    check_self_contained(text)
    assert "could not be rendered: KeyError" in text and "<b>x</b>" not in text
    assert_eval_figures(text, read_json(hand_run / "eval" / "metrics.json"))
    assert "Stage wall times" in text


def test_the_report_node_writes_the_html_report_of_a_real_run(real_run) -> None:
    root, events = real_run
    assert (root / "report.md").exists() and (root / "report.html").exists()
    text = (root / "report.html").read_text()
    check_self_contained(text)
    assert "could not be rendered" not in text
    test = read_json(root / "eval" / "metrics.json")
    assert {"popularity", "sasrec"} <= set(test)
    assert_eval_figures(text, test)
    rr = read_json(root / "rerank" / "metrics.json")
    assert all(f4(m["ndcg@5"]) in text for m in rr["models"].values())
    assert "SASRec" in text and "Stage wall times" in text and "Re-ranking (logged impressions)" in text

    # progress reached the callback from every kind of long work, and only through it
    tasks = {task for task, _, _ in events}
    assert {"sasrec", "evaluate sasrec", "rerank evaluator epochs", "rerank dnn epochs"} <= tasks, tasks
    assert all(1 <= step <= total for _, step, total in events)
