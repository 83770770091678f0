"""Quality report for a Semantic-ID tokenizer (METHODS.md stage 1, "Report for every tokenizer").

Per level: utilization (share of the K codes used), code-usage entropy (bits) and perplexity (2^H).
Overall: share of distinct tuples before collision handling, max items per tuple, reconstruction error,
fit time, and the **semantic purity** of level-1 codes against item categories, next to the purity of a
random assignment with the same code sizes (codes shuffled across items), plus normalised mutual information.
Purity grows with the number of codes by itself, so only the gap to the shuffled baseline is informative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.data.dataset import Dataset
from thinkrec.tokenize.sids import SIDMap, mixed_radix_keys
from thinkrec.utils.io import atomic_file

#: Shuffles averaged for the random-assignment baseline (one shuffle is noisy for small catalogues).
N_SHUFFLES = 5


def category_labels(dataset: Dataset, depth: int | None = None) -> list[str | None]:
    """One category label per item: the category path cut at ``depth`` levels ("Beauty > Makeup" for 2),
    or the full path (its leaf) for ``depth=None``; None for items without categories."""
    out: list[str | None] = []
    for cats in dataset.items["categories"].to_list():
        cats = [c for c in (cats or []) if c]
        out.append(" > ".join(cats if depth is None else cats[:depth]) or None)
    return out


def _usage_stats(codes: np.ndarray, k: int) -> dict[str, float | int]:
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "codebook_size": int(k),
        "used": int((counts > 0).sum()),
        "utilization": float((counts > 0).sum() / k),
        "entropy_bits": entropy,
        "max_entropy_bits": math.log2(k) if k > 0 else 0.0,
        "perplexity": float(2.0**entropy),
        "max_share": float(counts.max() / counts.sum()),
    }


def _entropy_nats(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Σ_clusters (count of the cluster's most common label) / n. Both arrays are int ids of equal length."""
    if clusters.size == 0:
        return float("nan")
    # Dense ids first, so sparse cluster keys (e.g. 2-level prefixes) do not blow up the tables.
    _, c = np.unique(clusters, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    joint = np.zeros((int(c.max()) + 1, int(y.max()) + 1), dtype=np.int64)
    np.add.at(joint, (c.reshape(-1), y.reshape(-1)), 1)
    return float(joint.max(1).sum() / clusters.size)


def nmi(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information, arithmetic normalisation: 2·I(C;Y) / (H(C) + H(Y))."""
    if clusters.size == 0:
        return float("nan")
    _, c = np.unique(clusters, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    c, y = c.reshape(-1), y.reshape(-1)
    joint = np.zeros((int(c.max()) + 1, int(y.max()) + 1), dtype=np.float64)
    np.add.at(joint, (c, y), 1.0)
    h_c, h_y = _entropy_nats(joint.sum(1)), _entropy_nats(joint.sum(0))
    if h_c + h_y == 0:
        return 1.0  # both partitions are a single block: identical
    h_cy = _entropy_nats(joint.reshape(-1))
    mi = h_c + h_y - h_cy
    return float(max(0.0, 2.0 * mi / (h_c + h_y)))


def semantic_purity(
    clusters: np.ndarray, categories: Sequence[str | None], seed: int = 0, n_shuffles: int = N_SHUFFLES
) -> dict[str, float | int]:
    """Purity and NMI of ``clusters`` against ``categories`` (items without a category are left out), and
    the same for clusters shuffled across items (same cluster sizes)."""
    cats = np.asarray([c if c else "" for c in categories], dtype=object)
    if cats.shape[0] != clusters.shape[0]:
        raise ValueError(f"{cats.shape[0]} category labels for {clusters.shape[0]} items")
    keep = cats != ""
    _, labels = np.unique(cats[keep].astype(str), return_inverse=True)
    labels = labels.reshape(-1)
    cl = np.asarray(clusters, dtype=np.int64)[keep]
    rng = np.random.default_rng(seed)
    rand_p, rand_n = [], []
    for _ in range(n_shuffles):
        shuffled = rng.permutation(cl)
        rand_p.append(purity(shuffled, labels))
        rand_n.append(nmi(shuffled, labels))
    return {
        "purity": purity(cl, labels),
        "purity_random": float(np.mean(rand_p)) if rand_p else float("nan"),
        "nmi": nmi(cl, labels),
        "nmi_random": float(np.mean(rand_n)) if rand_n else float("nan"),
        "n_labelled": int(keep.sum()),
        "n_categories": int(labels.max() + 1) if labels.size else 0,
    }


def sid_report(
    raw_codes: np.ndarray,
    sidmap: SIDMap | None,
    codebook_size: int | Sequence[int],
    x: np.ndarray | None = None,
    reconstruction: np.ndarray | None = None,
    categories: Sequence[str | None] | None = None,
    fit_s: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All stage-1 tokenizer metrics as a JSON-able dict (see the module docstring).

    ``reconstruction`` must live in the same space as ``x`` (e.g. ``Quantizer.reconstruct(codes)`` vs the
    quantizer's input). ``categories``: one label per item (see :func:`category_labels`).
    """
    raw = np.asarray(raw_codes, dtype=np.int64)
    n, n_levels = raw.shape
    sizes = [int(codebook_size)] * n_levels if isinstance(codebook_size, int | np.integer) else list(codebook_size)
    if len(sizes) != n_levels:
        raise ValueError(f"codebook_size has {len(sizes)} entries for {n_levels} levels")

    levels = [{"level": lv + 1, **_usage_stats(raw[:, lv], sizes[lv])} for lv in range(n_levels)]
    keys = mixed_radix_keys(raw, sizes)
    _, counts = np.unique(keys, return_counts=True)
    report: dict[str, Any] = {
        "n_items": int(n),
        "n_levels": int(n_levels),
        "codebook_size": sizes,
        "levels": levels,
        "utilization_mean": float(np.mean([lv["utilization"] for lv in levels])),
        "n_unique_tuples": int(counts.shape[0]),
        "unique_before_dedup": float(counts.shape[0] / n),
        # Items whose tuple no other item shares (a stricter view of the same thing).
        "items_alone_share": float(counts[counts == 1].sum() / n),
        "max_items_per_tuple": int(counts.max()),
        "fit_s": None if fit_s is None else float(fit_s),
    }
    if sidmap is not None:
        report["collision_strategy"] = sidmap.strategy
        report["sid_length"] = sidmap.sid_length
        report["n_reassigned"] = sidmap.n_reassigned
        if sidmap.strategy == "dedup":
            report["dedup_level_size"] = sidmap.radix[-1]
    if x is not None and reconstruction is not None:
        xa = np.asarray(x, dtype=np.float64)
        ra = np.asarray(reconstruction, dtype=np.float64)
        if xa.shape != ra.shape:
            raise ValueError(f"x {list(xa.shape)} and reconstruction {list(ra.shape)} differ in shape")
        sq = ((xa - ra) ** 2).sum(1)
        report["recon_mse"] = float(sq.mean() / xa.shape[1])  # per element
        report["recon_sq_l2"] = float(sq.mean())  # per item, ‖x − x̂‖²
        report["recon_rel"] = float(sq.sum() / max((xa**2).sum(), 1e-12))  # Σ‖x − x̂‖² / Σ‖x‖²
    if categories is not None:
        report["semantic_l1"] = semantic_purity(raw[:, 0], categories, seed)
        if n_levels > 1:
            report["semantic_l12"] = semantic_purity(mixed_radix_keys(raw[:, :2], sizes), categories, seed)
    return report


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}")
    return str(v)


def format_report(report: dict[str, Any], title: str | None = None) -> str:
    """Markdown: a per-level table and a table of the overall metrics."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| level | K | used | utilization | entropy (bits) | max entropy | perplexity | largest code share |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in report["levels"]:
        lines.append(
            f"| {lv['level']} | {lv['codebook_size']} | {lv['used']} | {lv['utilization']:.2%} | "
            f"{lv['entropy_bits']:.3f} | {lv['max_entropy_bits']:.3f} | {lv['perplexity']:.1f} | {lv['max_share']:.2%} |"
        )
    lines += ["", "| metric | value |", "|---|---:|"]
    rows: list[tuple[str, Any]] = [
        ("items", report["n_items"]),
        ("unique tuples before collision handling", f"{report['unique_before_dedup']:.2%}"),
        ("items alone in their tuple", f"{report['items_alone_share']:.2%}"),
        ("max items per tuple", report["max_items_per_tuple"]),
    ]
    for key, name in (("collision_strategy", "collision strategy"), ("sid_length", "SID length"),
                      ("n_reassigned", "items reassigned"), ("dedup_level_size", "dedup level size"),
                      ("recon_mse", "reconstruction MSE (per element)"), ("recon_rel", "relative reconstruction error"),
                      ("fit_s", "fit time (s)")):
        if key in report and report[key] is not None:
            rows.append((name, report[key]))
    for key, name in (("semantic_l1", "level-1 codes"), ("semantic_l12", "level-1,2 prefixes")):
        if key in report:
            s = report[key]
            rows.append((f"category purity, {name} (random assignment)", f"{s['purity']:.4f} ({s['purity_random']:.4f})"))
            rows.append((f"category NMI, {name} (random assignment)", f"{s['nmi']:.4f} ({s['nmi_random']:.4f})"))
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def plot_code_usage(raw_codes: np.ndarray, codebook_size: int | Sequence[int], path: str | Path,
                    title: str | None = None) -> Path:
    """PNG of per-level code usage, codes sorted by count (a flat line = uniform use), written atomically."""
    # Figure + Agg canvas directly: no pyplot global state, no backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    raw = np.asarray(raw_codes, dtype=np.int64)
    n, n_levels = raw.shape
    sizes = [int(codebook_size)] * n_levels if isinstance(codebook_size, int | np.integer) else list(codebook_size)
    fig = Figure(figsize=(4 * n_levels, 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_levels, squeeze=False)
    for lv, ax in enumerate(axes[0]):
        counts = np.sort(np.bincount(raw[:, lv], minlength=sizes[lv]))[::-1]
        used = int((counts > 0).sum())
        ax.bar(np.arange(sizes[lv]), counts, width=1.0, color="tab:blue")
        ax.axhline(n / sizes[lv], color="tab:red", lw=1, ls="--", label="uniform")
        ax.set_title(f"level {lv + 1}: {used}/{sizes[lv]} used")
        ax.set_xlabel("code rank")
        ax.set_ylabel("items")
        ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return path
