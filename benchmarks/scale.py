"""Scale: the funnel's stages at 10k, 100k and 1M synthetic items on one machine (wall time, peak RSS, throughput).

    python benchmarks/scale.py --sizes 10k,100k,1m          # each size in its own process, rows as they finish
    python benchmarks/scale.py --plot                        # the log-log plot from benchmarks/results/scale.json

Per size the built-in generator makes ``max(20k, items / 5)`` users with ~10 purchases each (1M items: 200k users,
2M interactions; 10k and 100k: 20k users, 200k interactions). Stages, each a row of ``benchmarks/results/scale.json`` (dataset ``synthetic-<size>``, model = the
stage):

* ``prepare``: generate the logs and the leave-one-out split.
* ``sids``: item vectors from the catalogue's attributes (:func:`thinkrec.data.synthetic.item_vectors`; MiniLM
  would take ~3 h at 1M, so it is timed on a 1,000-title sample and reported as titles/s), RQ-KMeans with the
  codebooks fitted on a sample of ``--fit-sample`` items and every item assigned in batches, then collision
  handling (the de-duplicating digit of :class:`~thinkrec.tokenize.sids.SIDMap`).
* ``trie``: the prefix trie the beams are constrained by.
* ``sasrec`` / ``retriever``: one training epoch (SASRec with a sampled softmax, the TIGER-style retriever with a
  sampled-softmax item head; both with sparse item-table gradients and lazy AdamW, so a step's cost does not grow
  with the catalogue), ``samples_per_s`` = steady-state training targets/s (steps after the first
  ``--warm-steps``), plus a validation pass on ``--valid-users`` users.
* ``beam``: trie-constrained beam search (beam 20, item-head re-scoring on) for ``--users`` test users.
* ``eval``: SASRec's full-ranking evaluation of the same users (chunked: ``--eval-batch`` users × all items at a
  time, never users × items).
* ``rerank``: EGLR re-ranker lists from the beams' top-20, supervised training for ``--rerank-epochs`` epochs and
  inference (lists/s).

``peak_rss_mb`` is the process's resident memory at its highest while the stage ran (sampled every 20 ms, so it
includes what earlier stages still hold, e.g. the dataset).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, row, save_rows  # noqa: E402
from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec  # noqa: E402
from thinkrec.data.batching import pad_histories  # noqa: E402
from thinkrec.data.splits import make_split  # noqa: E402
from thinkrec.data.synthetic import SyntheticConfig, generate, item_vectors  # noqa: E402
from thinkrec.eval.protocol import evaluate_full_ranking  # noqa: E402
from thinkrec.rerank.lists import funnel_lists, item_categories, temporal_thirds  # noqa: E402
from thinkrec.rerank.models import RerankModelConfig  # noqa: E402
from thinkrec.rerank.train import RerankTrainConfig, rerank_orders, train_reranker  # noqa: E402
from thinkrec.retrieval.inference import GenerativeScorer  # noqa: E402
from thinkrec.retrieval.model import RetrieverConfig  # noqa: E402
from thinkrec.retrieval.train import RetrieverTrainConfig, train_retriever  # noqa: E402
from thinkrec.tokenize.rqkmeans import RQKMeans, RQKMeansConfig  # noqa: E402
from thinkrec.tokenize.sids import SIDMap  # noqa: E402

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
STAGES = ("prepare", "sids", "trie", "sasrec", "retriever", "beam", "eval", "rerank")


class PeakRSS:
    """Highest resident set size of this process while the context runs (a 20 ms sampling thread)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0

    @contextmanager
    def watch(self):
        self.peak = self.proc.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                self.peak = max(self.peak, self.proc.memory_info().rss)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield self
        finally:
            done.set()
            t.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


class StepClock:
    """Progress callback that timestamps every training step: steady-state steps/s after the warm-up steps."""

    def __init__(self, warm: int) -> None:
        self.warm, self.times = warm, []

    def __call__(self, step: int, total: int) -> None:
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        t = self.times[self.warm:] if len(self.times) > self.warm + 1 else self.times
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9) if len(t) > 1 else 0.0


def minilm_titles_per_s(titles: list[str]) -> float | None:
    """Titles/s of the packaged MiniLM encoder on a sample (None where it is not installed)."""
    from thinkrec.tokenize.embed import EmbedConfig, embed_texts

    try:
        embed_texts(titles[:64], EmbedConfig(cache_dir=None))  # load + warm up
        t0 = time.perf_counter()
        embed_texts(titles, EmbedConfig(cache_dir=None))
        return len(titles) / (time.perf_counter() - t0)
    except (ImportError, OSError) as exc:
        print(f"MiniLM not timed: {exc}")
        return None


def run_size(size: str, args: argparse.Namespace) -> None:
    n_items = SIZES[size]
    dataset_name = f"synthetic-{size}"
    torch.manual_seed(0)
    rss = PeakRSS()

    def record(stage: str, wall: float, metrics: dict[str, Any], **extra: Any) -> None:
        metrics = {"wall_s": round(wall, 2), "peak_rss_mb": rss.mb, **metrics}
        save_rows("scale", [row("scale", dataset_name, stage, metrics, wall, n_items=n_items,
                                threads=torch.get_num_threads(), **extra)])
        print(f"[{size}] {stage}: " + "  ".join(f"{k} {v}" for k, v in metrics.items()), flush=True)

    # ------------------------------------------------------------------ prepare
    cfg = SyntheticConfig(n_items=n_items, n_users=max(20_000, n_items // 5), mean_seq_len=10.0, n_impressions=0, seed=0)
    with rss.watch():
        t0 = time.perf_counter()
        ds = generate(cfg)
        split = make_split(ds, "loo")
        wall = time.perf_counter() - t0
    record("prepare", wall, {"users": ds.n_users, "interactions": ds.interactions.height,
                             "interactions_per_s": round(ds.interactions.height / wall)})

    # ------------------------------------------------------------------ sids
    with rss.watch():
        t0 = time.perf_counter()
        x = item_vectors(ds, dim=args.dim)
        vectors_s = time.perf_counter() - t0
        qcfg = RQKMeansConfig(n_levels=3, codebook_size=256, niter=20, fit_sample=min(args.fit_sample, n_items))
        t1 = time.perf_counter()
        raw = RQKMeans(qcfg).fit_encode(x)
        quant_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        sidmap = SIDMap(raw, codebook_size=256, strategy="dedup")
        collision_s = time.perf_counter() - t2
        wall = time.perf_counter() - t0
    titles = ds.items["title"].to_list()
    sample = [titles[i] for i in np.random.default_rng(0).choice(len(titles), min(args.minilm_sample, len(titles)), replace=False)]
    tps = minilm_titles_per_s(sample) if args.minilm_sample else None
    unique = float(np.unique(raw, axis=0).shape[0] / n_items)
    record("sids", wall, {"vectors_s": round(vectors_s, 2), "quantize_s": round(quant_s, 2),
                          "collision_s": round(collision_s, 2), "items_per_s": round(n_items / wall),
                          "unique_before_dedup": round(unique, 4), "sid_length": len(sidmap.radix),
                          "minilm_titles_per_s": round(tps, 1) if tps else None,
                          "minilm_full_catalogue_s_est": round(n_items / tps) if tps else None},
           fit_sample=qcfg.fit_sample, radix=list(sidmap.radix))

    # ------------------------------------------------------------------ trie
    with rss.watch():
        t0 = time.perf_counter()
        trie = sidmap.trie()
        wall = time.perf_counter() - t0
    record("trie", wall, {"sids_per_s": round(n_items / wall), "prefixes": [trie.n_prefixes(t) for t in range(trie.depth)]})

    rng = np.random.default_rng(0)
    valid_sub = split.valid.subset(np.sort(rng.choice(len(split.valid), min(args.valid_users, len(split.valid)), replace=False)))
    users = np.sort(rng.choice(len(split.test), min(args.users, len(split.test)), replace=False))
    test = split.test.subset(users)

    # ------------------------------------------------------------------ sasrec
    scfg = SASRecConfig(loss="sampled", negatives=256, epochs=1, eval_batch_size=args.eval_batch, warmup_steps=50,
                        sparse_items=True)  # a step touches the rows it reads (lazy AdamW), not 1M rows
    clock = StepClock(args.warm_steps)
    with rss.watch():
        t0 = time.perf_counter()
        sasrec, hist = train_sasrec(dataclasses.replace(split, valid=valid_sub), scfg, progress=clock, log=lambda s: None)
        wall = time.perf_counter() - t0
    lengths = np.diff(split.train_offsets)
    n_targets = int((lengths[lengths >= 2] - 1).sum())  # every position but the first of each trained sequence
    steps = len(clock.times)
    record("sasrec", wall, {"samples_per_s": round(clock.steps_per_s() * n_targets / max(steps, 1)),
                            "epoch_s": round(hist[0]["train_s"], 1), "steps": steps, "train_targets": int(n_targets),
                            "valid_ndcg@10": round(hist[0].get("valid_ndcg@10", float("nan")), 4)},
           loss="sampled softmax, 256 uniform negatives")

    # ------------------------------------------------------------------ retriever
    mcfg = RetrieverConfig(item_negatives=256, sparse_item_grad=True)
    tcfg = RetrieverTrainConfig(epochs=1, valid_users=args.valid_users, warmup_steps=50)
    clock = StepClock(args.warm_steps)
    with rss.watch():
        t0 = time.perf_counter()
        model, rhist = train_retriever(split, sidmap, mcfg, tcfg, progress=clock, log=lambda s: None)
        wall = time.perf_counter() - t0
    steps = len(clock.times)
    n_targets = rhist[0]["samples_per_s"] * rhist[0]["train_s"]
    record("retriever", wall, {"samples_per_s": round(clock.steps_per_s() * n_targets / max(steps, 1)),
                               "epoch_s": round(rhist[0]["train_s"], 1), "steps": steps,
                               "train_targets": int(round(n_targets)),
                               "valid_ndcg@10": round(rhist[0]["valid_ndcg@10"], 4)},
           setup="tiger (item input, causal encoder), item head: sampled softmax, 256 uniform negatives")

    # ------------------------------------------------------------------ beam
    scorer = GenerativeScorer(model, sidmap, beam_size=20, dense_weight=1.0)
    tokens = torch.from_numpy(pad_histories(test.offsets, test.items, np.arange(len(test)), mcfg.max_len))
    flush = torch.set_flush_denormal(True)
    scorer.recommend(tokens[: args.beam_batch], 20)  # warm-up (builds the cached item table once)
    with rss.watch():
        t0 = time.perf_counter()
        recs = [scorer.recommend(tokens[lo: lo + args.beam_batch], 20) for lo in range(0, len(test), args.beam_batch)]
        wall = time.perf_counter() - t0
    cand = np.concatenate([r.items for r in recs])
    cand_scores = np.concatenate([r.scores for r in recs])
    hit = (cand == test.targets[:, None]).any(1).mean()
    record("beam", wall, {"users_per_s": round(len(test) / wall, 1), "users": len(test), "recall@20": round(float(hit), 4)},
           beam=20, batch_size=args.beam_batch, dense_weight=1.0, flush_denormal=bool(flush))

    # ------------------------------------------------------------------ eval
    with rss.watch():
        t0 = time.perf_counter()
        metrics, _ = evaluate_full_ranking(sasrec.score, test, ks=(10,), batch_size=args.eval_batch)
        wall = time.perf_counter() - t0
    record("eval", wall, {"users_per_s": round(len(test) / wall, 1), "users": len(test),
                          "ndcg@10": round(metrics["ndcg@10"], 4)}, scorer="sasrec", batch_size=args.eval_batch)

    # ------------------------------------------------------------------ rerank
    with rss.watch():
        t0 = time.perf_counter()
        lists = funnel_lists(test, cand, cand_scores, split, item_categories(ds))
        build_s = time.perf_counter() - t0
        train, valid, rest = temporal_thirds(lists, 0.1, 0.1)
        rcfg = RerankTrainConfig(epochs=args.rerank_epochs, rl_epochs=0, patience=args.rerank_epochs)
        t1 = time.perf_counter()
        reranker, _ = train_reranker("eglr", train, valid, RerankModelConfig(), rcfg, log=lambda s: None)
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        rerank_orders(reranker, lists)
        infer_s = time.perf_counter() - t2
        wall = time.perf_counter() - t0
    record("rerank", wall, {"samples_per_s": round(len(train) * args.rerank_epochs / train_s, 1),
                            "lists_per_s": round(len(lists) / infer_s, 1), "lists": len(lists),
                            "build_s": round(build_s, 2), "train_s": round(train_s, 2)},
           reranker="eglr (supervised phase)")


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thinkrec.utils.io import read_json

    rows = read_json(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = dict(zip(STAGES, plt.cm.tab10.colors, strict=False))  # one colour per stage in both panels
    for stage in STAGES:
        pts = sorted((r["n_items"], r) for r in rows if r["model"] == stage and "n_items" in r)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1]["metrics"]["wall_s"] for p in pts], "o-", color=colours[stage], label=stage)
        per = [p[1]["metrics"].get("users_per_s") or p[1]["metrics"].get("samples_per_s") for p in pts]
        if all(per):
            axes[1].plot(xs, per, "o-", color=colours[stage], label=stage)
    for ax, title in ((axes[0], "wall time of the stage (s)"), (axes[1], "throughput (users/s or samples/s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items (users = max(20k, items / 5); 1M: 10× the interactions)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    xs = np.array([1e4, 1e6])
    axes[0].plot(xs, 2.0 * xs / 1e4, "k--", alpha=0.4, label="linear (slope 1)")
    axes[0].legend(fontsize=8, ncol=2)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10k,100k,1m")
    ap.add_argument("--users", type=int, default=10_000, help="test users for beam search, evaluation, re-ranking")
    ap.add_argument("--valid-users", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--fit-sample", type=int, default=100_000)
    ap.add_argument("--minilm-sample", type=int, default=1000)
    ap.add_argument("--warm-steps", type=int, default=20)
    ap.add_argument("--beam-batch", type=int, default=256)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--rerank-epochs", type=int, default=3)
    ap.add_argument("--plot", action="store_true", help="only draw benchmarks/results/scale.png")
    args = ap.parse_args()
    if args.plot:
        print(plot(RESULTS / "scale.json"))
        return
    sizes = args.sizes.split(",")
    if len(sizes) > 1:  # one process per size: peak memory of one size never includes another's
        rest, skip = [], False
        for a in sys.argv[1:]:
            if skip or a.startswith("--sizes"):
                skip = a == "--sizes"
                continue
            rest.append(a)
        for s in sizes:
            # relative script path: the rows record the command a user types from the project root
            subprocess.run([sys.executable, os.path.relpath(__file__), *rest, "--sizes", s], check=True, env=os.environ)
        print(plot(RESULTS / "scale.json"))
        return
    run_size(sizes[0], args)


if __name__ == "__main__":
    main()
