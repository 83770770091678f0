"""Tokenizer report: usage statistics, collisions, reconstruction, semantic purity, Markdown and plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from thinkrec.data.dataset import Dataset
from thinkrec.tokenize.report import category_labels, format_report, nmi, plot_code_usage, purity, sid_report
from thinkrec.tokenize.sids import SIDMap


def test_usage_statistics_on_a_hand_case() -> None:
    raw = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 0]])
    rep = sid_report(raw, SIDMap(raw, 4), 4)
    l1, l2 = rep["levels"]
    assert (l1["used"], l1["utilization"]) == (2, 0.5)
    p = np.array([3, 2]) / 5
    assert l1["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert l1["perplexity"] == pytest.approx(2 ** l1["entropy_bits"])
    assert l1["max_entropy_bits"] == 2.0 and l1["max_share"] == pytest.approx(0.6)
    assert l2["utilization"] == 0.5
    assert rep["n_unique_tuples"] == 4 and rep["unique_before_dedup"] == pytest.approx(0.8)
    assert rep["items_alone_share"] == pytest.approx(0.6) and rep["max_items_per_tuple"] == 2
    assert rep["collision_strategy"] == "dedup" and rep["sid_length"] == 3 and rep["dedup_level_size"] == 2


def test_uniform_usage_has_max_entropy() -> None:
    raw = np.arange(8)[:, None].repeat(2, 1)
    rep = sid_report(raw, None, 8, fit_s=1.25)
    for lv in rep["levels"]:
        assert lv["utilization"] == 1.0
        assert lv["entropy_bits"] == pytest.approx(3.0) and lv["perplexity"] == pytest.approx(8.0)
    assert rep["unique_before_dedup"] == 1.0 and rep["fit_s"] == 1.25 and "collision_strategy" not in rep


def test_reconstruction_error() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    r = np.array([[1.0, 1.0], [0.0, 0.0]])
    rep = sid_report(np.array([[0], [1]]), None, 2, x=x, reconstruction=r)
    assert rep["recon_mse"] == pytest.approx((1 + 4) / 4)
    assert rep["recon_sq_l2"] == pytest.approx((1 + 4) / 2)
    assert rep["recon_rel"] == pytest.approx(5 / 5)
    with pytest.raises(ValueError, match="shape"):
        sid_report(np.array([[0], [1]]), None, 2, x=x, reconstruction=r[:, :1])


def test_purity_and_nmi_hand_cases() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert purity(np.array([5, 5, 7, 7, 9, 9]), labels) == 1.0
    assert nmi(np.array([5, 5, 7, 7, 9, 9]), labels) == pytest.approx(1.0)
    assert purity(np.zeros(6, dtype=np.int64), labels) == pytest.approx(2 / 6)
    assert nmi(np.zeros(6, dtype=np.int64), labels) == pytest.approx(0.0)
    assert purity(np.array([0, 0, 0, 1, 1, 1]), labels) == pytest.approx(4 / 6)


def test_nmi_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    c, y = rng.integers(0, 7, 300), rng.integers(0, 5, 300)
    c[:150] = y[:150]
    assert nmi(c, y) == pytest.approx(metrics.normalized_mutual_info_score(y, c), abs=1e-9)


def test_perfect_codes_have_purity_one_and_beat_random() -> None:
    rng = np.random.default_rng(1)
    cats = rng.integers(0, 8, 400)
    raw = np.stack([cats, rng.integers(0, 16, 400), rng.integers(0, 16, 400)], 1)
    names = [f"cat{c}" for c in cats]
    rep = sid_report(raw, SIDMap(raw, 16), 16, categories=names)
    s = rep["semantic_l1"]
    assert s["purity"] == 1.0 and s["nmi"] == pytest.approx(1.0)
    assert s["purity_random"] < 0.3 and s["nmi_random"] < 0.1
    assert s["n_labelled"] == 400 and s["n_categories"] == 8
    assert rep["semantic_l12"]["purity"] == 1.0


def test_planted_structure_beats_shuffled_codes() -> None:
    """Level-1 codes follow the category 70 % of the time: purity must clearly beat the shuffled baseline,
    and items without a category are left out."""
    rng = np.random.default_rng(2)
    n, n_cat = 1000, 10
    cats = rng.integers(0, n_cat, n)
    noisy = np.where(rng.random(n) < 0.7, cats * 2 + rng.integers(0, 2, n), rng.integers(0, 2 * n_cat, n))
    raw = np.stack([noisy, rng.integers(0, 4, n)], 1)
    names: list[str | None] = [f"c{c}" for c in cats]
    names[0] = None
    names[1] = ""
    s = sid_report(raw, None, [2 * n_cat, 4], categories=names, seed=3)["semantic_l1"]
    assert s["n_labelled"] == n - 2
    assert s["purity"] > 0.65 and s["purity"] > s["purity_random"] + 0.4
    assert s["nmi"] > s["nmi_random"] + 0.3
    again = sid_report(raw, None, [2 * n_cat, 4], categories=names, seed=3)["semantic_l1"]
    assert again == s  # seeded
    with pytest.raises(ValueError, match="category labels"):
        sid_report(raw, None, [2 * n_cat, 4], categories=names[:-1])


def test_category_labels() -> None:
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["x", "y", "z"],
            "categories": [["Beauty", "Makeup", "Lips"], [], ["Beauty", "Hair"]],
        }
    )
    ds = Dataset.from_frames("toy", pl.DataFrame({"user_id": ["u"], "item_id": ["a"]}), items)
    assert category_labels(ds) == ["Beauty > Makeup > Lips", None, "Beauty > Hair"]
    assert category_labels(ds, depth=2) == ["Beauty > Makeup", None, "Beauty > Hair"]


def test_format_report_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 16, size=(200, 3))
    x = rng.normal(size=(200, 4))
    rep = sid_report(raw, SIDMap(raw, 16, strategy="reassign"), 16, x=x, reconstruction=x * 0.9,
                     categories=[f"c{v % 4}" for v in raw[:, 0]], fit_s=0.5)
    md = format_report(rep, title="toy")
    assert md.startswith("### toy")
    assert "| level | K | used | utilization |" in md and md.count("\n| 1 | 16 |") == 1
    assert "category purity, level-1 codes" in md and "reassign" in md
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in rep["semantic_l1"].values())
    out = plot_code_usage(raw, 16, tmp_path / "plots" / "usage.png", title="toy")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
