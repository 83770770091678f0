import pytest
import torch

from tests.retrieval.fixtures import planted_dataset, random_sids
from thinkrec.data.splits import leave_one_out
from thinkrec.eval.protocol import evaluate_full_ranking
from thinkrec.retrieval import (
    GenerativeRetriever,
    GenerativeScorer,
    RetrieverConfig,
    RetrieverTrainConfig,
    load_retriever,
    save_retriever,
    train_retriever,
)
from thinkrec.retrieval.clusters import code_clusters

torch.set_num_threads(1)


TINY = dict(d_model=32, n_enc_layers=1, n_dec_layers=1, n_heads=2, ffn=64, dropout=0.0, max_len=10)


@pytest.mark.parametrize(("thinking", "causal", "mode"), [(False, True, "item"), (True, True, "item"), (True, True, "code"), (False, False, "item")])
def test_planted_sequence_is_learned(thinking, causal, mode):
    ds = planted_dataset()
    split = leave_one_out(ds)
    sm, books = random_sids(ds)
    mcfg = RetrieverConfig(**TINY, thinking=thinking, causal_encoder=causal, input_mode=mode, n_clusters=2)
    tcfg = RetrieverTrainConfig(lr=5e-3, batch_size=32, epochs=40, patience=40, warmup_steps=10, eval_beam=5)
    clusters = code_clusters(books, sm.radix, 2) if thinking else None
    model, history = train_retriever(split, sm, mcfg, tcfg, code_clusters=clusters, log=lambda m: None)
    metrics, _ = evaluate_full_ranking(GenerativeScorer(model, sm, 5).score, split.test, ks=(1, 5), max_len=10)
    assert metrics["recall@1"] >= 0.95, (metrics, history[-1])


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    ds = planted_dataset(n_users=80)
    split = leave_one_out(ds)
    sm, books = random_sids(ds)
    mcfg = RetrieverConfig(**{**TINY, "dropout": 0.1}, thinking=True, n_clusters=2)
    tcfg = RetrieverTrainConfig(lr=3e-3, batch_size=16, epochs=4, patience=10, warmup_steps=5, eval_beam=5)
    clusters = code_clusters(books, sm.radix, 2)
    quiet = lambda m: None  # noqa: E731
    full, hist_full = train_retriever(split, sm, mcfg, tcfg, code_clusters=clusters, log=quiet)
    ck = tmp_path / "ckpt"
    _, hist_a = train_retriever(split, sm, mcfg, tcfg, code_clusters=clusters, checkpoint_dir=ck, log=quiet, stop_after_epochs=2)
    assert len(hist_a) == 2 and (ck / "checkpoint" / "state.safetensors").exists()
    resumed, hist_b = train_retriever(split, sm, mcfg, tcfg, code_clusters=clusters, checkpoint_dir=ck, log=quiet)
    assert [h["loss"] for h in hist_b] == [h["loss"] for h in hist_full]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # a different configuration must not silently resume
    with pytest.raises(ValueError, match="different configuration"):
        train_retriever(split, sm, RetrieverConfig(**TINY), tcfg, checkpoint_dir=ck, log=quiet)


def test_save_load_roundtrip(tmp_path):
    ds = planted_dataset(n_users=20)
    sm, books = random_sids(ds)
    model = train_retriever(leave_one_out(ds), sm, RetrieverConfig(**TINY, thinking=True, n_clusters=2),
                            RetrieverTrainConfig(epochs=1, batch_size=8), code_clusters=code_clusters(books, sm.radix, 2),
                            log=lambda m: None)[0]
    save_retriever(model, tmp_path / "m")
    again = load_retriever(tmp_path / "m")
    assert again.config == model.config and torch.equal(again.code_clusters, model.code_clusters)
    tokens = torch.tensor([[0, 3, 4], [1, 2, 5]])
    torch.testing.assert_close(GenerativeScorer(again, sm, 5).score(None, tokens), GenerativeScorer(model, sm, 5).score(None, tokens))


def test_thinking_scale_and_checkpoints_saved_before_it(tmp_path):
    """``think_scale_init`` scales the fed-back state (learned); a checkpoint without the parameter loads as
    the unscaled model it was trained as."""
    from safetensors.torch import load_file, save_file

    ds = planted_dataset(n_users=20)
    sm, books = random_sids(ds)
    torch.manual_seed(0)
    scaled = GenerativeRetriever(torch.from_numpy(sm.codes), sm.radix, RetrieverConfig(**TINY, thinking=True, think_scale_init=0.02))
    assert scaled.think_scale.requires_grad and float(scaled.think_scale.detach()) == pytest.approx(0.02)
    h = torch.randn(3, TINY["d_model"])
    torch.testing.assert_close(scaled.thought(1, h), 0.02 * h + scaled.think_pos[1])
    torch.manual_seed(0)
    raw = GenerativeRetriever(torch.from_numpy(sm.codes), sm.radix, RetrieverConfig(**TINY, thinking=True))
    assert not raw.think_scale.requires_grad and float(raw.think_scale.detach()) == 1.0
    save_retriever(raw, tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["think_scale"]  # as written before the parameter existed
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(
        (tmp_path / "m" / "config.json").read_text().replace('"think_scale_init": null,', ""))
    again = load_retriever(tmp_path / "m")
    assert again.config.think_scale_init is None
    tokens = torch.tensor([[0, 3, 4], [1, 2, 5]])
    torch.testing.assert_close(GenerativeScorer(again, sm, 5).score(None, tokens), GenerativeScorer(raw.eval(), sm, 5).score(None, tokens))
