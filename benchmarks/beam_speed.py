"""Trie-constrained beam search speed on Beauty: users/s of the batched beam search (TIGER, S²GR) at a beam size.

    python benchmarks/beam_speed.py [--run runs/beauty] [--beams 20,50] [--users 4096] [--tag after]

TIGER is the run's trained retriever (``retrieval/tiger``); S²GR uses the same SID map and the preset's model size
with thinking on — trained weights where the run has ``retrieval/s2gr``, else random initial weights (the cost of a
beam search does not depend on the weights' values: every beam stays alive at these beam sizes on 12k items).
The users are the first ``--users`` test examples (histories as evaluation sees them), in batches of 256, after one
warm-up batch, with denormal floats flushed to zero as the server runs (``--keep-denormals``: not). ``--tag`` names the code version measured (``before`` / ``after``): rows are
``benchmarks/results/beam_speed.json``, dataset ``beauty``, model ``tiger`` / ``s2gr``, key ``<model>-beam<B>-<tag>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row, save_rows  # noqa: E402
from thinkrec.data.batching import pad_histories  # noqa: E402
from thinkrec.pipeline.funnel import load  # noqa: E402
from thinkrec.retrieval.beam import constrained_beam_search  # noqa: E402
from thinkrec.retrieval.model import GenerativeRetriever  # noqa: E402
from thinkrec.retrieval.stage import RETRIEVERS  # noqa: E402


def _s2gr(funnel, tiger):
    folder = funnel.root / "retrieval" / "s2gr"
    if (folder / "config.json").exists():
        return funnel.scorer("s2gr").model, "trained"
    cfg = RETRIEVERS.get("s2gr")(funnel.config.retrieval.model)
    sidmap = tiger.sidmap
    radix = list(sidmap.radix)
    n = cfg.n_clusters
    clusters = torch.stack([torch.arange(max(radix)) % n for _ in radix])  # any clustering costs the same
    torch.manual_seed(0)
    model = GenerativeRetriever(torch.as_tensor(sidmap.codes), radix, cfg, clusters).eval()
    return model, "random init (speed only)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/beauty")
    ap.add_argument("--beams", default="20,50")
    ap.add_argument("--users", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--models", default="tiger,s2gr")
    ap.add_argument("--tag", default="after")
    ap.add_argument("--keep-denormals", action="store_true", help="Leave denormal floats on (slow on x86 CPUs).")
    args = ap.parse_args()
    # trained weights leave denormal activations that cost x86 several times a normal float; serving flushes them
    flush = not args.keep_denormals and torch.set_flush_denormal(True)
    funnel = load(args.run)
    tiger = funnel.scorer("tiger")
    ex = funnel.split.test
    n = min(args.users, len(ex))
    tokens = torch.from_numpy(pad_histories(ex.offsets, ex.items, np.arange(n), funnel.config.sasrec.max_len))
    rows = []
    for name in args.models.split(","):
        model, weights = (tiger.model, "trained") if name == "tiger" else _s2gr(funnel, tiger)
        for beam in (int(b) for b in args.beams.split(",")):
            constrained_beam_search(model, tokens[: args.batch_size], tiger.trie, beam)  # warm-up
            t0 = time.perf_counter()
            for lo in range(0, n, args.batch_size):
                constrained_beam_search(model, tokens[lo: lo + args.batch_size], tiger.trie, beam)
            wall = time.perf_counter() - t0
            ups = n / wall
            print(f"{name} beam {beam}: {ups:.0f} users/s ({n} users, {wall:.1f}s, weights {weights})", flush=True)
            rows.append(row("beam_speed", "beauty", name, {"users_per_s": round(ups, 1)}, wall, beam=beam,
                            users=n, batch_size=args.batch_size, threads=torch.get_num_threads(), code=args.tag,
                            weights=weights, flush_denormal=bool(flush), key=f"{name}-beam{beam}-{args.tag}"))
    save_rows("beam_speed", rows, key="key")


if __name__ == "__main__":
    main()
