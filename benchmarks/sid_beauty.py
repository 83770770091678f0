"""Semantic IDs on Amazon Beauty 2014 (3 levels × 256): RQ-KMeans, RQ-VAE, CoBa and an ablation of every switch.

    python benchmarks/sid_beauty.py [--data-root ../shared/data] [--only rqkmeans,coba] [--skip-ablations]

Embeddings (all-MiniLM-L6-v2 from the offline PyPI package) are cached under .cache/embeddings, so only the
first run pays for them; ``fit_s`` is the quantizer fit alone. LETTER's published Beauty SIDs
(amazon_beauty_2014/Beauty.index.json) are scored by the same report for reference. Writes
benchmarks/results/sid_beauty.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, row, save_rows  # noqa: E402
from thinkrec.data import load_dataset, resolve_data_root  # noqa: E402
from thinkrec.data.splits import leave_one_out  # noqa: E402
from thinkrec.tokenize.report import category_labels, sid_report  # noqa: E402
from thinkrec.tokenize.sids import SIDMap  # noqa: E402
from thinkrec.tokenize.stage import TokenizeConfig, run_tokenize  # noqa: E402

RQVAE_OFF = {"kmeans_init": False, "ema": False, "dead_code_reset": False}
VARIANTS: dict[str, tuple[str, str, dict]] = {
    # name: (model label, method, quantizer overrides)
    "rqkmeans": ("rqkmeans", "rqkmeans", {}),
    "rqkmeans-balanced": ("rqkmeans", "rqkmeans_balanced", {}),
    "rqvae": ("rqvae", "rqvae", {}),
    "coba": ("coba", "coba", {}),
}
ABLATIONS: dict[str, tuple[str, str, dict]] = {
    "rqvae-plain (no mitigation)": ("rqvae", "rqvae", RQVAE_OFF),
    "rqvae -kmeans_init": ("rqvae", "rqvae", {"kmeans_init": False}),
    "rqvae -ema": ("rqvae", "rqvae", {"ema": False}),
    "rqvae -dead_code_reset": ("rqvae", "rqvae", {"dead_code_reset": False}),
    "rqvae +diversity_loss": ("rqvae", "rqvae", {"diversity_loss": True}),
    "rqvae +random_last_level": ("rqvae", "rqvae", {"random_last_levels": 1}),
    "coba -collaborative": ("coba", "coba", {"collaborative": False}),
    "coba -uniformity": ("coba", "coba", {"uniformity": False}),
    "coba -load_balance": ("coba", "coba", {"load_balance": False}),
}


def summarise(report: dict) -> dict:
    levels = report["levels"]
    sem = report.get("semantic_l1", {})
    return {
        "utilization_min": round(min(lv["utilization"] for lv in levels), 4),
        **{f"utilization_l{lv['level']}": round(lv["utilization"], 4) for lv in levels},
        **{f"perplexity_l{lv['level']}": round(lv["perplexity"], 1) for lv in levels},
        "unique_before_dedup": round(report["unique_before_dedup"], 5),
        "max_items_per_tuple": report["max_items_per_tuple"],
        "recon_rel": None if report.get("recon_rel") is None else round(report["recon_rel"], 4),
        "purity_l1": round(sem.get("purity", float("nan")), 4),
        "purity_l1_random": round(sem.get("purity_random", float("nan")), 4),
        "nmi_l1": round(sem.get("nmi", float("nan")), 4),
        "nmi_l1_random": round(sem.get("nmi_random", float("nan")), 4),
        "fit_s": None if report.get("fit_s") is None else round(report["fit_s"], 1),
    }


def letter_row(dataset, data_root: Path, depth: int | None) -> dict | None:
    path = data_root / "amazon_beauty_2014" / "Beauty.index.json"
    if not path.exists():
        return None
    index = json.loads(path.read_text())
    codes = np.array([[int(tok.split("_")[1].rstrip(">")) for tok in index[str(i)]] for i in range(dataset.n_items)])
    raw = codes[:, :3]  # LETTER's 4th token is its own dedup digit
    report = sid_report(raw, SIDMap(raw, codebook_size=256), 256, categories=category_labels(dataset, depth))
    m = summarise(report)
    m["unique_4_tokens"] = round(len({tuple(c) for c in codes}) / len(codes), 5)
    return row("sid_beauty", "beauty", "letter-published", m, 0.0, variant="LETTER Beauty.index.json (published)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--category-depth", type=int, default=3, help="category path depth for purity (Beauty > X > Y)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("beauty", args.data_root)
    split = leave_one_out(ds)
    variants = dict(VARIANTS)
    if not args.skip_ablations:
        variants.update(ABLATIONS)
    if args.only:
        wanted = [v.strip() for v in args.only.split(",")]
        variants = {k: v for k, v in variants.items() if k in wanted}
    rows = []
    lr = letter_row(ds, resolve_data_root(args.data_root), args.category_depth)
    if lr:
        rows.append(lr)
    for name, (model, method, overrides) in variants.items():
        t = time.perf_counter()
        cfg = TokenizeConfig(method=method, quantizer=overrides, category_depth=args.category_depth)
        art = run_tokenize(ds, split, cfg, out_dir=None)
        m = summarise(art.report)
        m["peak_rss_mb"] = round(peak_rss_mb(), 1)
        rows.append(row("sid_beauty", "beauty", model, m, time.perf_counter() - t, variant=name, overrides=overrides))
        print(name, m, flush=True)
        save_rows("sid_beauty", rows, key="variant")


if __name__ == "__main__":
    main()
