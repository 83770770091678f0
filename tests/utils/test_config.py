import pytest

from thinkrec.pipeline.config import RunConfig
from thinkrec.utils.config import ConfigError, config_hash, load_config


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("run:\n  name: x\nsasrec:\n  d_model: 32\neval:\n  ks: [1, 5]\n")
    cfg = load_config(RunConfig, f, ["sasrec.lr=0.01", "data.dataset=beauty", "run.threads=1"])
    assert cfg.run.name == "x" and cfg.sasrec.d_model == 32 and cfg.sasrec.lr == 0.01
    assert cfg.eval.ks == [1, 5] and cfg.data.dataset == "beauty" and cfg.run.threads == 1
    assert config_hash(cfg) != config_hash(RunConfig())


def test_bad_keys_and_types_name_the_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sasrec:\n  dmodel: 32\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*sasrec.dmodel"):
        load_config(RunConfig, f)
    with pytest.raises(ConfigError, match=r"sasrec.epochs.*integer"):
        load_config(RunConfig, None, ["sasrec.epochs=many"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(RunConfig, bad)
