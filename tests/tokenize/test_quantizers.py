"""RQ-KMeans, RQ-VAE (with each collapse switch) and CoBa on small synthetic data with planted clusters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from thinkrec.tokenize.base import FitContext
from thinkrec.tokenize.coba import CoBa, cooccurrence_graph, normalized_adjacency, propagate
from thinkrec.tokenize.quantizers import build_quantizer, load_quantizer, make_config
from thinkrec.tokenize.rqkmeans import (
    RQKMeans,
    balanced_assign,
    balanced_kmeans,
    code_usage,
    nearest_centroid,
    sq_dists,
)
from thinkrec.tokenize.rqvae import RQVAE
from thinkrec.utils.config import ConfigError

# tiny model: every fit below takes well under a second on one thread
TINY = dict(
    code_dim=8, hidden_dims=[64, 32], batch_size=256, lr=3e-3, log_every=5, num_threads=1, ema_decay=0.9, dead_code_steps=60
)
PLAIN = dict(kmeans_init=False, ema=False, dead_code_reset=False)


def planted(n: int = 1200, d: int = 32, k: int = 24, spread: float = 3.0, noise: float = 1.0, sizes=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    p = None if sizes is None else np.asarray(sizes, dtype=float) / np.sum(sizes)
    lab = rng.choice(k, n, p=p)
    return (centers[lab] + noise * rng.normal(size=(n, d))).astype(np.float32)


def skewed(n: int = 1500, d: int = 48, seed: int = 0) -> np.ndarray:
    return planted(n, d, k=8, sizes=[0.5, 0.2, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03], seed=seed)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return planted()


# ============================================================================================ RQ-KMeans
def test_rqkmeans_shapes_determinism_and_residuals(x):
    q = RQKMeans(n_levels=3, codebook_size=16, niter=10, seed=3, num_threads=1)
    codes = q.fit_encode(x)
    assert codes.shape == (x.shape[0], 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    assert [c.shape for c in q.codebooks()] == [(16, 32)] * 3
    np.testing.assert_array_equal(codes, q.encode(x))  # plain: fit assignment = nearest centroid
    again = RQKMeans(n_levels=3, codebook_size=16, niter=10, seed=3, num_threads=1).fit_encode(x)
    np.testing.assert_array_equal(codes, again)
    errs = [h["residual_mse"] for h in q.history]
    assert errs[0] > errs[1] > errs[2]
    recon = q.reconstruct(codes)
    np.testing.assert_allclose(recon, sum(c[codes[:, i]] for i, c in enumerate(q.codebooks())), rtol=1e-6)
    assert float(((x - recon) ** 2).sum(1).mean()) == pytest.approx(errs[-1], rel=1e-3)


def test_rqkmeans_fit_on_a_sample_then_batched_assignment(x):
    c = np.random.default_rng(1).normal(size=(16, 32)).astype(np.float32)
    np.testing.assert_array_equal(nearest_centroid(x, c, batch=7), sq_dists(x, c).argmin(1))
    q = RQKMeans(n_levels=2, codebook_size=24, niter=10, num_threads=1, fit_sample=400, assign_batch=100)
    codes = q.fit_encode(x)
    np.testing.assert_array_equal(codes, q.encode(x))  # every item, not only the 400 fitted
    # the planted clusters come back from a third of the items: first-level codes are almost pure per cluster
    full = RQKMeans(n_levels=2, codebook_size=24, niter=10, num_threads=1).fit_encode(x)
    rng = np.random.default_rng(0)
    rng.normal(size=(24, 32))
    lab = rng.choice(24, x.shape[0])  # planted()'s labels, drawn the same way
    purity = [np.bincount(codes[lab == k, 0]).max() / max((lab == k).sum(), 1) for k in range(24)]
    assert np.mean(purity) > 0.9
    recon = lambda cd, qq: float(((x - qq.reconstruct(cd)) ** 2).sum(1).mean())  # noqa: E731
    assert q.history[-1]["residual_mse"] == pytest.approx(recon(codes, q), rel=1e-4)
    assert len(np.unique(full[:, 0])) == len(np.unique(codes[:, 0]))
    with pytest.raises(ConfigError, match="fit_sample"):
        RQKMeans(fit_sample=10, balanced=True)


def test_rqkmeans_save_load_round_trip(x, tmp_path):
    q = RQKMeans(n_levels=2, codebook_size=16, niter=5, balanced=True, num_threads=1)
    codes = q.fit_encode(x)
    q.save(tmp_path / "rqk")
    back = load_quantizer(tmp_path / "rqk")
    assert isinstance(back, RQKMeans) and back.config == q.config
    np.testing.assert_array_equal(back.encode(x), q.encode(x))
    np.testing.assert_array_equal(back.fit_codes_, codes)


def test_balanced_assign_respects_capacity():
    rng = np.random.default_rng(0)
    d = rng.random((103, 10)) ** 3
    d[:, 0] = 0.0  # everyone prefers column 0
    a = balanced_assign(d, 11)
    counts = np.bincount(a, minlength=10)
    assert counts.sum() == 103 and counts.max() <= 11
    with pytest.raises(ValueError):
        balanced_assign(d, 5)


def test_balanced_rqkmeans_flattens_usage_on_skewed_data():
    # 70 % of the points in one tight blob: k-means spends few centroids there, so those clusters are huge
    xs = np.concatenate([planted(1050, 32, k=1, noise=0.5, seed=5), planted(450, 32, k=30, seed=6)])
    ratios = {}
    for bal in (False, True):
        q = RQKMeans(n_levels=2, codebook_size=32, niter=10, balanced=bal, num_threads=1)
        codes = q.fit_encode(xs)
        counts = np.bincount(codes[:, 0], minlength=32)
        ratios[bal] = counts.max() / counts.mean()
    assert ratios[True] <= 1.1  # capacity ceil(n / K)
    assert ratios[False] > 2.0 * ratios[True]
    c, a = balanced_kmeans(xs, 16, niter=5, seed=0, capacity_factor=1.25)
    assert np.bincount(a, minlength=16).max() <= int(np.ceil(1.25 * xs.shape[0] / 16))


# ============================================================================================ RQ-VAE
def test_rqvae_shapes_determinism_save_load(x, tmp_path):
    cfg = dict(TINY, n_levels=3, codebook_size=16, epochs=4, random_last_levels=1, seed=5)
    q = RQVAE(**cfg)
    codes = q.fit_encode(x)
    assert codes.shape == (x.shape[0], 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    assert [b.shape for b in q.codebooks()] == [(16, 8)] * 3
    assert q.reconstruct(codes).shape == x.shape
    assert q.history and {"recon", "quant", "utilization", "perplexity"} <= set(q.history[-1])
    np.testing.assert_array_equal(codes, RQVAE(**cfg).fit_encode(x))  # same seed, same codes
    q.save(tmp_path / "vae")
    back = load_quantizer(tmp_path / "vae")
    assert isinstance(back, RQVAE) and back.config == q.config
    np.testing.assert_array_equal(back.encode(x), q.encode(x))
    np.testing.assert_array_equal(back.encode(x), codes)
    np.testing.assert_allclose(back.reconstruct(codes), q.reconstruct(codes), rtol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_kmeans_init_raises_utilization_where_plain_collapses(x):
    util = {}
    for name, kw in {"plain": PLAIN, "kmeans_init": dict(PLAIN, kmeans_init=True)}.items():
        codes = RQVAE(**TINY, n_levels=2, codebook_size=32, epochs=10, **kw).fit_encode(x)
        util[name] = np.mean(code_usage(codes, 32)["utilization"])
    assert util["plain"] < 0.4  # random codebooks: only the few codes nearest the initial latents are used
    assert util["kmeans_init"] > util["plain"] + 0.3


def test_ema_raises_utilization_and_uniqueness_where_gradient_codebooks_collapse():
    # unstandardised, large-scale inputs: the latents move far during training; gradient-updated codewords
    # (Adam, lr-limited steps) fall behind and die, EMA codewords follow the residuals they are assigned
    xs = planted(1200, 32, k=64, spread=1.0, noise=0.3, seed=1) * 30
    stats = {}
    for ema in (False, True):
        kw = dict(TINY, n_levels=2, codebook_size=32, epochs=20, batch_size=200, lr=1e-3, standardize=False)
        codes = RQVAE(**kw, **dict(PLAIN, kmeans_init=True, ema=ema)).fit_encode(xs)
        u = code_usage(codes, 32)
        stats[ema] = (np.mean(u["utilization"]), u["unique_share"])
    assert stats[True][0] > stats[False][0] + 0.05
    assert stats[True][1] > 1.3 * stats[False][1]


def test_dead_code_reset_revives_a_code_made_dead(x):
    q = RQVAE(**dict(TINY, dead_code_steps=3), n_levels=2, codebook_size=16, epochs=3, seed=2)
    q.fit(x)
    far = 1e3
    with torch.no_grad():
        q.net.codebooks[0][5] = far  # a codeword far from every latent: never nearest, so dead
    assert 5 not in q.encode(x)[:, 0]
    off = copy.deepcopy(q)
    off.config.dead_code_reset = False
    off.continue_training(x, epochs=2)
    assert 5 not in off.encode(x)[:, 0]
    assert float(off.net.codebooks[0][5].detach().abs().min()) > far / 2
    q.continue_training(x, epochs=2)
    assert float(q.net.codebooks[0][5].detach().abs().max()) < far / 10  # re-seeded from a residual
    assert 5 in q.encode(x)[:, 0]


def _intra_over_all(book: np.ndarray, groups: np.ndarray) -> float:
    d = np.sqrt(sq_dists(book, book))
    same = (groups[:, None] == groups[None, :]) & ~np.eye(len(groups), dtype=bool)
    off = ~np.eye(len(groups), dtype=bool)
    return float(d[same].mean() / d[off].mean())


def test_diversity_loss_pulls_codes_of_a_cluster_together(x):
    # same seed → same k-means-initialised codebook → the same codeword groups; only the loss differs
    base = dict(TINY, n_levels=1, codebook_size=32, epochs=8, ema=False, dead_code_reset=False, diversity_clusters=4,
                diversity_recluster_every=10**6)
    books = {}
    for div in (False, True):
        q = RQVAE(**base, diversity_loss=div, diversity_weight=1.0)
        q.fit(x)
        books[div] = q.codebooks()[0]
    groups = q._groups[0].numpy()
    assert np.bincount(groups).tolist() == [8, 8, 8, 8]  # constrained k-means: equal groups
    ratio = {div: _intra_over_all(book, groups) for div, book in books.items()}
    assert ratio[True] < 0.75 * ratio[False]


def test_random_last_level_raises_uniqueness():
    xs = planted(300, 32, k=10, noise=0.05, seed=3)  # 10 tight clusters: learned tuples collide heavily
    share = {}
    for r in (0, 1):
        q = RQVAE(**TINY, n_levels=2, codebook_size=32, epochs=3, random_last_levels=r)
        codes = q.fit_encode(xs)
        share[r] = code_usage(codes, 32)["unique_share"]
        if r:
            np.testing.assert_array_equal(codes, q.encode(xs))  # the random code is keyed by the item vector
            assert len(np.unique(codes[:, 1])) == 32
    assert share[0] < 0.2
    assert share[1] > share[0] + 0.3


# ============================================================================================ CoBa
def _sequences(n_items: int, n_users: int = 400, length: int = 6, seed: int = 0) -> FitContext:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, n_items, length) for _ in range(n_users)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return FitContext(train_offsets=offsets, train_items=np.concatenate(seqs))


def test_cooccurrence_graph_counts_windows_within_users():
    offsets = np.array([0, 3, 5, 6])
    items = np.array([0, 1, 2, 2, 3, 0])  # users: [0 1 2] [2 3] [0]
    a2 = cooccurrence_graph(offsets, items, 5, window=2).toarray()
    expected = np.zeros((5, 5))
    for i, j in [(0, 1), (1, 2), (2, 3)]:
        expected[i, j] = expected[j, i] = 1
    np.testing.assert_array_equal(a2, expected)  # no (2, 2) across users, no (3, 0) across users
    a3 = cooccurrence_graph(offsets, items, 5, window=3).toarray()
    assert a3[0, 2] == a3[2, 0] == 1 and a3.trace() == 0
    a_hat = normalized_adjacency(cooccurrence_graph(offsets, items, 5, window=2)).toarray()
    assert a_hat[4, 4] == 1.0  # an item without co-occurrences keeps its own vector


def test_collaborative_propagation_pulls_co_occurring_items_together():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(50, 16)).astype(np.float32)
    # training: items 0 and 1 are consumed together; items 2 and 3 only co-occur in held-out data (not given)
    ctx = FitContext(train_offsets=np.arange(0, 61, 2), train_items=np.array([0, 1] * 20 + [5, 6] * 10))
    h = CoBa(collaborative=True, alpha=0.3, prop_hops=3).propagate(xs, ctx)
    dist = lambda m, i, j: float(np.linalg.norm(m[i] - m[j]))  # noqa: E731
    assert dist(h, 0, 1) < 0.6 * dist(xs, 0, 1)
    np.testing.assert_allclose(h[[2, 3, 49]], xs[[2, 3, 49]], rtol=1e-6)  # not in training: unchanged
    assert CoBa(collaborative=False).propagate(xs, ctx) is not None
    np.testing.assert_array_equal(CoBa(collaborative=False).propagate(xs, ctx), xs)
    with pytest.raises(ValueError, match="train_offsets"):
        CoBa(collaborative=True).propagate(xs, None)


def test_propagation_reduces_to_content_without_propagation():
    xs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    a_hat = normalized_adjacency(cooccurrence_graph(np.array([0, 4]), np.array([0, 1, 2, 3]), 4, window=4))
    np.testing.assert_allclose(propagate(xs, a_hat, alpha=1.0, hops=3), xs, rtol=1e-6)  # α = 1: H(k) = X
    np.testing.assert_allclose(propagate(xs, a_hat, alpha=0.2, hops=0), xs, rtol=1e-6)  # K = 0: H_align = X


def test_coba_load_balancing_flattens_usage_on_skewed_data():
    xs = skewed()
    base = dict(TINY, n_levels=2, codebook_size=32, epochs=15, collaborative=False, uniformity=False)
    stats = {}
    for lb in (False, True):
        codes = CoBa(**base, load_balance=lb, balance_strength=0.3).fit_encode(xs)
        u = code_usage(codes, 32)
        stats[lb] = (u["perplexity"][0], u["utilization"][0])
    assert stats[True][0] > 1.1 * stats[False][0]
    assert stats[True][1] > stats[False][1]


def test_coba_uniformity_increases_minimum_codeword_distance(x):
    base = dict(TINY, n_levels=1, codebook_size=32, epochs=8, collaborative=False, load_balance=False)
    min_d = {}
    for uni in (False, True):
        q = CoBa(**base, uniformity=uni, uniformity_weight=1.0, uniformity_margin=0.5)
        q.fit(x)
        d = np.sqrt(sq_dists(*(q.codebooks()[0],) * 2)) + np.eye(32) * 1e9
        min_d[uni] = float(d.min() / d[d < 1e8].mean())
    assert min_d[True] > 1.5 * min_d[False]


def test_coba_fit_encode_save_load(tmp_path):
    xs = planted(600, 32, k=12, seed=4)
    ctx = _sequences(600)
    q = CoBa(**TINY, n_levels=2, codebook_size=16, epochs=3, random_last_levels=1)
    codes = q.fit_encode(xs, ctx)
    assert codes.shape == (600, 2)
    h = q.propagate(xs, ctx)
    # the frozen final usage is the fitting items' usage; encode applies it (new items: one-shot assignment)
    np.testing.assert_allclose(q.final_usage[0].numpy(), np.bincount(codes[:, 0], minlength=16) / 600, rtol=1e-6)
    assert (q.encode(h)[:, 0] == codes[:, 0]).mean() > 0.6
    np.testing.assert_array_equal(q.encode(xs)[:, 1], codes[:, 1])  # the random level is keyed by the raw vector
    q.save(tmp_path / "coba")
    back = load_quantizer(tmp_path / "coba")
    assert isinstance(back, CoBa) and back.config == q.config
    np.testing.assert_array_equal(back.encode(h), q.encode(h))
    np.testing.assert_array_equal(back.fit_codes_, codes)
    with pytest.raises(ValueError, match="train_offsets"):
        CoBa(**TINY, n_levels=2, codebook_size=16, epochs=1).fit(xs)


# ============================================================================================ registry
def test_registry_builds_validates_and_aliases():
    q = build_quantizer("rq-kmeans-balanced", {"codebook_size": 8})
    assert isinstance(q, RQKMeans) and q.config.balanced and q.config.codebook_size == 8
    assert isinstance(build_quantizer("tiger", None), RQVAE)
    assert isinstance(build_quantizer("s2gr", {"hidden_dims": [16, 8]}), CoBa)
    with pytest.raises(ConfigError, match="codebok_size"):
        build_quantizer("rqvae", {"codebok_size": 8})
    with pytest.raises(ConfigError, match="unknown quantizer"):
        build_quantizer("pq", {})
    with pytest.raises(ConfigError, match="random_last_levels"):
        make_config("rqvae", {"random_last_levels": 3})
