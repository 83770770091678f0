import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.baselines.test_sasrec import _planted
from thinkrec.baselines.bsarec import (
    BSARec,
    BSARecConfig,
    FrequencyLayer,
    causal_low_pass_kernel,
    rfft_low_pass,
)
from thinkrec.baselines.popularity import Popularity
from thinkrec.baselines.sasrec import SASRec, SASRecConfig, check_config, train_sasrec
from thinkrec.data.splits import leave_one_out
from thinkrec.eval.protocol import compute_ranks, evaluate_full_ranking
from thinkrec.utils.config import config_hash

TINY = dict(d_model=16, n_layers=2, n_heads=2, dropout=0.0, max_len=8)


def test_frequency_split_is_exact_and_the_causal_filter_is_the_papers_at_the_last_position():
    torch.manual_seed(0)
    n, c = 8, 5
    layer = FrequencyLayer(4, n, c, dropout=0.0)
    x = torch.randn(3, n, 4)
    low, high = layer.split(x, None)
    torch.testing.assert_close(low + high, x)  # low + high = x: with beta² = 1 the filter is the identity
    with torch.no_grad():
        layer.sqrt_beta.fill_(1.0)
    torch.testing.assert_close(layer(x), layer.ln(2 * x))  # … before the residual LayerNorm(x + filtered)
    # position t = the paper's rFFT filter on x[: t + 1] right-aligned after zeros, read at the last position
    for t in range(n):
        window = torch.zeros_like(x)
        window[:, n - 1 - t :] = x[:, : t + 1]
        torch.testing.assert_close(low[:, t], rfft_low_pass(window, c)[:, -1], rtol=1e-5, atol=1e-5)
    # padded positions enter as zeros, so trimming leading padding changes nothing (the kernel's leading block)
    valid = torch.arange(n)[None].expand(3, n) >= 3
    padded_low = layer.split(x, valid)[0]
    torch.testing.assert_close(layer.split(x[:, 3:], None)[0], padded_low[:, 3:], rtol=1e-5, atol=1e-5)
    assert torch.equal(padded_low[:, :3], torch.zeros_like(padded_low[:, :3]))
    # c // 2 + 1 ≥ n // 2 + 1 keeps every rFFT bin: the low-pass is the identity
    for length in (7, 8):
        y = torch.randn(2, length, 3)
        torch.testing.assert_close(rfft_low_pass(y, length), y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(causal_low_pass_kernel(length, length), torch.eye(length), rtol=0, atol=1e-6)
    # c = 1 keeps the mean only
    torch.testing.assert_close(rfft_low_pass(x, 1), x.mean(1, keepdim=True).expand_as(x), rtol=1e-5, atol=1e-5)


def test_causal_outputs_and_no_target_leak_at_evaluation():
    """A later token never changes an earlier position's output (so training on every position's next item sees
    no target); the paper's non-causal rFFT would. At evaluation an example's target, which is not in the tokens,
    changes no score, and scores do not depend on the padding or the batch."""
    torch.manual_seed(0)
    split = leave_one_out(_planted(n_users=60))
    model = BSARec(split.n_items, BSARecConfig(**TINY)).eval()
    tokens = torch.randint(1, split.n_items + 1, (4, 8))
    changed = tokens.clone()
    changed[:, 5:] = torch.randint(1, split.n_items + 1, (4, 3))
    with torch.no_grad():
        torch.testing.assert_close(model.hidden(tokens)[:, :5], model.hidden(changed)[:, :5])
        assert not torch.allclose(model.hidden(tokens)[:, 5:], model.hidden(changed)[:, 5:])
    x = torch.randn(1, 8, 4)
    later = x.clone()
    later[:, 5:] += 1.0
    assert not torch.allclose(rfft_low_pass(x, 5)[:, :5], rfft_low_pass(later, 5)[:, :5])  # the paper's filter leaks

    scores: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def capture(key: str):
        def score(users: torch.Tensor, toks: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = model.score(users, toks)
            scores[key].append(out)
            return out
        return score

    ex = split.test
    other = dataclasses.replace(ex, targets=(ex.targets + 7) % split.n_items)
    compute_ranks(capture("a"), ex, max_len=12, batch_size=16)
    compute_ranks(capture("b"), other, max_len=12, batch_size=16)  # padded to 12 > max_len 8: the last 8 are kept
    for a, b in zip(scores["a"], scores["b"], strict=True):
        assert torch.equal(a, b)
    # one example alone (little padding) scores as in a batch padded for longer histories
    short = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [9, 8, 7, 6, 5, 4, 3, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model.score(None, short)[:1], model.score(None, torch.tensor([[3, 4, 5]])),
                                   rtol=1e-5, atol=1e-5)


def test_bsarec_learns_planted_sequential_pattern_and_beats_popularity():
    torch.manual_seed(0)
    split = leave_one_out(_planted())
    cfg = BSARecConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.0, max_len=12, lr=5e-3, batch_size=64, epochs=40,
                       patience=40, warmup_steps=10)
    model, history = train_sasrec(split, cfg, log=lambda m: None)
    assert isinstance(model, BSARec)
    bsa, _ = evaluate_full_ranking(model.score, split.test, ks=(1, 5), max_len=cfg.max_len)
    pop, _ = evaluate_full_ranking(Popularity.fit(split).score, split.test, ks=(1, 5), max_len=cfg.max_len)
    assert bsa["recall@1"] > 0.9, bsa
    assert bsa["recall@5"] > pop["recall@5"] + 0.5, (bsa, pop)
    assert history[-1]["loss"] < history[0]["loss"]


def test_save_folder_roundtrip_and_sasrec_is_unchanged(tmp_path):
    torch.manual_seed(0)
    model = BSARec(20, BSARecConfig(**TINY, freq_c=3, freq_alpha=0.4)).eval()
    tokens = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]])
    model.save_folder(tmp_path / "bsa")
    meta = json.loads((tmp_path / "bsa" / "config.json").read_text())
    assert meta["model"] == "bsarec" and meta["config"]["freq_c"] == 3 and meta["config"]["freq_alpha"] == 0.4
    again = BSARec.from_folder(tmp_path / "bsa")
    assert isinstance(again.config, BSARecConfig) and again.config == model.config
    with torch.no_grad():
        assert torch.equal(model.score(None, tokens), again.score(None, tokens))
    with pytest.raises(ValueError, match="bsarec"):
        SASRec.from_folder(tmp_path / "bsa")

    # SASRec: its config dataclass (hashed into pipeline cache keys) and its folder format are as before
    assert config_hash(SASRecConfig()) == "2c91c9e954f0"
    assert [f.name for f in dataclasses.fields(BSARecConfig)][:-2] == [f.name for f in dataclasses.fields(SASRecConfig)]
    sas = SASRec(20, SASRecConfig(**TINY)).eval()
    sas.save_folder(tmp_path / "sas")
    assert json.loads((tmp_path / "sas" / "config.json").read_text())["model"] == "sasrec"
    assert not any("freq" in k for k in sas.state_dict())
    # alpha = 0 is SASRec: the same weights give the same scores (the attention path is SASRec's)
    zero = BSARec(20, BSARecConfig(**TINY, freq_alpha=0.0)).eval()
    missing, unexpected = zero.load_state_dict(sas.state_dict(), strict=False)
    assert not unexpected and all(".freq." in k for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(zero.score(None, tokens), sas.score(None, tokens))


def test_config_checks_name_the_bsarec_section_and_the_pipeline_registers_it():
    with pytest.raises(ValueError, match="bsarec.freq_alpha"):
        check_config(BSARecConfig(freq_alpha=1.5))
    with pytest.raises(ValueError, match="bsarec.n_heads"):
        check_config(BSARecConfig(n_heads=3))
    from thinkrec.pipeline.config import RunConfig, load_run_config, resolve
    from thinkrec.pipeline.scorers import SCORERS, active_scorers
    from thinkrec.utils.config import ConfigError

    with pytest.raises(ConfigError, match="bsarec.seed"):
        load_run_config(None, ["bsarec.seed=3"])
    cfg = resolve(load_run_config(None, ["bsarec.freq_c=7"]))
    assert cfg.bsarec.freq_c == 7 and cfg.bsarec.seed not in (0, cfg.sasrec.seed)
    assert "bsarec" not in active_scorers(RunConfig())  # opt-in
    listed = load_run_config(None, ["candidates.sources=[sasrec,bsarec,cooc]"])
    assert "bsarec" in active_scorers(listed)
    spec = SCORERS.get("bsarec")
    assert spec.stage == "sasrec" and spec.folder("bsarec") == "bsarec" and spec.distributed
    assert spec.inputs(listed, "bsarec")["bsarec"] is listed.bsarec
    assert np.isfinite(listed.bsarec.freq_alpha)


def test_pipeline_trains_evaluates_and_merges_bsarec_when_listed(tmp_path):
    import yaml

    import thinkrec
    from tests.pipeline.test_run import TINY
    from thinkrec.utils.io import read_json

    sets = [*TINY, "bsarec.epochs=2", "bsarec.d_model=16", "bsarec.n_layers=1", "bsarec.max_len=20",
            "candidates.sources=[sasrec,bsarec]", "candidates.k=20", "stages=[data,sasrec,candidates,evaluate]"]
    overrides = {s.split("=", 1)[0]: yaml.safe_load(s.split("=", 1)[1]) for s in sets}
    root = thinkrec.run("configs/synthetic.yaml", log=lambda m: None, run__out_dir=str(tmp_path), run__name="b",
                        **overrides)
    assert read_json(root / "bsarec" / "config.json")["model"] == "bsarec"
    assert {"sasrec", "bsarec"} <= set(read_json(root / "eval" / "metrics.json"))
    assert "bsarec" in read_json(root / "candidates" / "info.json")["test"]["source_recall"]
