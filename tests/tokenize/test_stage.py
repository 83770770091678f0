import numpy as np
import pytest
from typer.testing import CliRunner

from thinkrec.cli import app
from thinkrec.data.registry import load_dataset
from thinkrec.data.splits import leave_one_out
from thinkrec.tokenize.stage import TokenizeConfig, load_tokenize, run_tokenize


@pytest.fixture(scope="module")
def small():
    ds = load_dataset("synthetic", n_users=200, n_items=150, n_impressions=10)
    rng = np.random.default_rng(0)
    # vectors with category structure: one centre per leaf plus noise (stands in for text embeddings)
    leaf = ds.items["leaf"].to_numpy()
    centres = rng.normal(size=(leaf.max() + 1, 24))
    x = (centres[leaf] + 0.3 * rng.normal(size=(len(leaf), 24))).astype(np.float32)
    return ds, leave_one_out(ds), x


@pytest.mark.parametrize("method", ["rqkmeans", "rqkmeans_balanced", "coba"])
def test_run_tokenize_saves_a_bijective_artifact(tmp_path, small, method):
    ds, split, x = small
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    quant = {"codebook_size": 8}
    if method == "coba":
        quant.update(epochs=5, batch_size=0, hidden_dims=[32, 16], code_dim=8)
    cfg = TokenizeConfig(method=method, embed_npy=str(npy), cache_dir=str(tmp_path / "cache"), quantizer=quant)
    art = run_tokenize(ds, split, cfg, tmp_path / "sids", log=lambda m: None)
    items = np.arange(ds.n_items)
    np.testing.assert_array_equal(art.sidmap.sid_to_item(art.sidmap.item_to_sid(items)), items)
    assert len({tuple(c) for c in art.sidmap.codes}) == ds.n_items
    for f in ["codes.parquet", "report.json", "report.md", "code_usage.png", "quantizer", "sidmap"]:
        assert (tmp_path / "sids" / f).exists(), f
    again = load_tokenize(tmp_path / "sids")
    np.testing.assert_array_equal(again.sidmap.codes, art.sidmap.codes)
    codes = again.quantizer.encode(x)
    assert codes.shape == (ds.n_items, 3) and codes.min() >= 0 and codes.max() < 8
    rep = art.report
    assert rep["method"] == method and 0 < rep["levels"][0]["utilization"] <= 1
    # level-1 codes carry the planted category structure
    assert rep["semantic_l1"]["purity"] > rep["semantic_l1"]["purity_random"]


def test_cli_tokenize(tmp_path, small):
    ds, _, x = small
    npy = tmp_path / "x.npy"
    prepared = tmp_path / "prep"
    ds.save(prepared)
    np.save(npy, x)
    res = CliRunner().invoke(app, ["tokenize", "--dataset", str(prepared), "--method", "rqkmeans", "--name", "tok",
                                   "--set", f"run.out_dir={tmp_path}", "--set", f"tokenize.embed_npy={npy}",
                                   "--set", "tokenize.quantizer.codebook_size=8"])
    assert res.exit_code == 0, res.output
    assert "utilization" in res.output and (tmp_path / "tok" / "sids" / "codes.parquet").exists()
