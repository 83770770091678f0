import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from thinkrec.baselines.ease import EASE, EASEConfig
from thinkrec.data.dataset import Dataset
from thinkrec.data.splits import leave_one_out


def _dataset(seqs: list[list[int]]) -> Dataset:
    """Item ``i`` gets the catalogue index ``i`` (the catalogue frame fixes the order)."""
    rows = [(u, f"i{it:03d}", t) for u, s in enumerate(seqs) for t, it in enumerate(s)]
    catalogue = pl.DataFrame({"item_id": [f"i{i:03d}" for i in range(max(map(max, seqs)) + 1)]})
    return Dataset.from_frames("e", pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row"),
                               items=catalogue)


def _random_split(seed: int = 0, n_users: int = 30, n_items: int = 12):
    rng = np.random.default_rng(seed)
    return leave_one_out(_dataset([list(rng.integers(0, n_items, rng.integers(4, 10))) for _ in range(n_users)]))


def test_weights_equal_the_closed_form():
    split = _random_split()
    cfg = EASEConfig(l2=3.0)
    model = EASE.fit(split, cfg)
    n = split.n_items
    x = np.zeros((split.n_users, n))
    for u in range(split.n_users):
        x[u, split.train_sequence(u)] = 1.0  # binary: repeats count once
    p = np.linalg.inv(x.T @ x + cfg.l2 * np.eye(n))
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0.0)
    got = model.weights.numpy()
    assert np.all(np.diag(got) == 0.0)
    assert np.allclose(got, want, atol=1e-6)
    tokens = torch.tensor([[0, 0, 4, 2, 4], [0, 0, 0, 0, 0]])  # item 3 twice counts once; empty history → 0
    hot = np.zeros((2, n))
    hot[0, [3, 1]] = 1.0
    assert np.allclose(model.score(torch.tensor([0, 1]), tokens).numpy(), hot @ want, atol=1e-5)


def test_learns_planted_pairs():
    # every user buys 3 random pairs (2k, 2k+1), both items of a pair always together
    rng = np.random.default_rng(1)
    n_pairs, seqs = 15, []
    for _ in range(200):
        pairs = rng.choice(n_pairs, 3, replace=False)
        seqs.append(list(rng.permutation(np.concatenate([2 * pairs, 2 * pairs + 1]))))
    split = leave_one_out(_dataset(seqs))
    model = EASE.fit(split, EASEConfig(l2=10.0))
    queries = [rng.choice(n_pairs, 2, replace=False) for _ in range(100)]  # (asked pair k, full pair j)
    hist = [[2 * j, 2 * j + 1, 2 * k] for k, j in queries]
    scores = model.score(torch.arange(len(hist)), torch.tensor(hist) + 1)
    scores[torch.arange(len(hist))[:, None], torch.tensor(hist)] = float("-inf")
    hit = scores.argmax(1).numpy() == np.array([2 * k + 1 for k, _ in queries])
    assert hit.mean() >= 0.9, hit.mean()


def test_folder_roundtrip(tmp_path):
    model = EASE.fit(_random_split(2), EASEConfig(l2=5.0))
    model.save_folder(tmp_path / "ease")
    assert sorted(p.name for p in (tmp_path / "ease").iterdir()) == ["config.json", "model.safetensors"]
    again = EASE.from_folder(tmp_path / "ease", "cpu")
    assert again.config == model.config
    tokens = torch.tensor([[0, 3, 4, 5], [1, 2, 9, 10]])
    assert torch.equal(model.score(torch.tensor([0, 1]), tokens), again.score(torch.tensor([0, 1]), tokens))


def test_refuses_a_catalogue_over_max_items():
    split = _random_split(n_items=12)
    with pytest.raises(ValueError, match=r"max_items") as err:
        EASE.fit(split, EASEConfig(max_items=split.n_items - 1))
    assert str(split.n_items) in str(err.value)


def test_only_training_sequences_count():
    split = _random_split(3)
    before = EASE.fit(split).weights.numpy().tobytes()
    rng = np.random.default_rng(4)
    changed = dataclasses.replace(
        split,
        valid=dataclasses.replace(split.valid, targets=rng.integers(0, split.n_items, len(split.valid))),
        test=dataclasses.replace(split.test, targets=rng.integers(0, split.n_items, len(split.test))),
    )
    assert not np.array_equal(changed.test.targets, split.test.targets)
    assert EASE.fit(changed).weights.numpy().tobytes() == before
