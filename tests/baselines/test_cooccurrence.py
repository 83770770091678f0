import numpy as np
import polars as pl
import torch

from thinkrec.baselines.cooccurrence import Cooccurrence, CooccurrenceConfig
from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import leave_one_out
from thinkrec.eval.protocol import evaluate_full_ranking


def _dataset(seqs: list[list[int]]) -> Dataset:
    rows = [(u, f"i{it}", t) for u, s in enumerate(seqs) for t, it in enumerate(s)]
    return Dataset.from_frames("c", pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row"))


def test_scores_equal_an_independent_count():
    rng = np.random.default_rng(0)
    split = leave_one_out(_dataset([list(rng.integers(0, 15, rng.integers(5, 12))) for _ in range(40)]))
    cfg = CooccurrenceConfig(window=2, backward=0.5, history=3, decay=0.5)
    model = Cooccurrence.fit(split, cfg)
    n = split.n_items
    dense = np.zeros((n, n))
    for u in range(split.n_users):
        s = split.train_sequence(u)
        for d in (1, 2):
            for a, b in zip(s[:-d], s[d:], strict=True):
                dense[a, b] += 1 / d
                dense[b, a] += 0.5 / d
    np.fill_diagonal(dense, 0)
    hist = [3, 7, 1, 4]
    tokens = torch.tensor([[0, 0] + [h + 1 for h in hist]])
    want = sum(0.5 ** age * dense[h] for age, h in enumerate(reversed(hist[-3:])))
    got = model.score(torch.tensor([0]), tokens)[0].numpy()
    assert np.allclose(got - model.tie, want, atol=1e-5)


def test_learns_planted_transitions_and_folder_roundtrip(tmp_path):
    # every user walks 0 → 1 → … in blocks of a ring: the next item always follows the last one
    rng = np.random.default_rng(1)
    seqs = []
    for _ in range(200):
        start = int(rng.integers(0, 30))
        seqs.append([(start + t) % 30 for t in range(int(rng.integers(5, 9)))])
    split = leave_one_out(_dataset(seqs))
    model = Cooccurrence.fit(split)
    m, _ = evaluate_full_ranking(model.score, split.test, ks=(1, 5), max_len=20)
    assert m["recall@5"] > 0.9, m
    model.save_folder(tmp_path / "cooc")
    again = Cooccurrence.from_folder(tmp_path / "cooc")
    tokens = torch.tensor([[0, 3, 4, 5], [1, 2, 9, 10]])
    assert torch.equal(model.score(torch.tensor([0, 1]), tokens), again.score(torch.tensor([0, 1]), tokens))
