"""The trainable funnel stages on a CUDA device — the same code as on CPU, only ``device="cuda"``.

Skipped where no CUDA device exists (CI, the 2-core dev box); run on a GPU box with ``pytest tests/test_devices.py``.
"""

import numpy as np
import pytest
import torch

from tests.retrieval.fixtures import planted_dataset, random_sids
from thinkrec.data.splits import leave_one_out
from thinkrec.data.synthetic import SyntheticConfig, generate
from thinkrec.eval.protocol import evaluate_full_ranking
from thinkrec.rerank import (
    RerankModelConfig,
    RerankTrainConfig,
    impression_lists,
    temporal_thirds,
    train_reranker,
)
from thinkrec.rerank.train import rerank_orders, train_evaluator
from thinkrec.retrieval import GenerativeScorer, RetrieverConfig, RetrieverTrainConfig, train_retriever
from thinkrec.retrieval.beam import beams_to_items, constrained_beam_search
from thinkrec.retrieval.inference import tune_dense_weight

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICE = "cuda"


def test_s2gr_learns_the_planted_sequence_on_cuda():
    ds = planted_dataset()
    split = leave_one_out(ds)
    sm, _ = random_sids(ds)
    clusters = torch.full((len(sm.radix), max(sm.radix)), -1)  # the dedup level (if any) has no clusters
    clusters[:2, :4] = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]])  # 2 clusters of the 4 codes per level
    mcfg = RetrieverConfig(d_model=32, n_enc_layers=1, n_dec_layers=1, n_heads=2, ffn=64, dropout=0.0, max_len=10,
                           thinking=True, n_clusters=2)
    tcfg = RetrieverTrainConfig(lr=5e-3, batch_size=32, epochs=40, patience=40, warmup_steps=10, eval_beam=5)
    model, _ = train_retriever(split, sm, mcfg, tcfg, device=DEVICE, code_clusters=clusters, log=lambda m: None)
    assert next(model.parameters()).is_cuda
    scorer = GenerativeScorer(model, sm, 5, dense_weight=1.0)
    metrics, _ = evaluate_full_ranking(scorer.score, split.test, ks=(1, 5), max_len=10, device=DEVICE)
    assert metrics["recall@1"] >= 0.95
    tokens = torch.randint(1, ds.n_items + 1, (16, 6), device=DEVICE)
    beams = constrained_beam_search(model, tokens, sm.trie().to(DEVICE), 5, return_thoughts=True)
    items = beams_to_items(sm, beams.codes, beams.scores)
    assert beams.codes.is_cuda and bool((items >= 0).all())  # every beam decodes to a real item
    weight, by_weight = tune_dense_weight(model, sm, split.valid, 5, max_len=10)
    assert weight in by_weight


def test_eglr_supervised_and_rl_on_cuda():
    ds = generate(SyntheticConfig(n_users=200, n_items=150, n_impressions=300, seed=3))
    tr, va, te = temporal_thirds(impression_lists(ds)[0])
    cfg = RerankModelConfig(d_model=16)
    tc = RerankTrainConfig(epochs=2, evaluator_epochs=2, rl_epochs=1, rollouts=4)
    ev, _ = train_evaluator(tr, va, cfg, tc, device=DEVICE, log=lambda s: None)
    model, hist = train_reranker("eglr", tr, va, cfg, tc, evaluator=ev, device=DEVICE, log=lambda s: None)
    assert any(h["stage"] == "rl" for h in hist)
    order = rerank_orders(model, te, device=DEVICE)
    assert (np.sort(order, 1) == np.arange(te.list_len)).all()  # permutations: nothing repeated or invented
