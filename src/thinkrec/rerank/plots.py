"""Plots of the generator's reasoning: entropy by list position (with and without reasoning), reasoning steps per
position, and temperature per step. Input: ``profiles.json`` of the re-ranking stage ({model: profile})."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from thinkrec.utils.io import atomic_path  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_profiles(profiles: dict[str, dict[str, list[float]]], out_dir: str | Path, prefix: str = "rerank") -> list[Path]:
    out = Path(out_dir)
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, p in profiles.items():
        pos = range(1, len(p["entropy_first"]) + 1)
        reasons = any(s > 0 for s in p["steps"])
        ax.plot(pos, p["entropy_first"], marker="o", ms=3, label=f"{name}: before reasoning" if reasons else name)
        if reasons:
            ax.plot(pos, p["entropy_final"], marker="s", ms=3, ls="--", label=f"{name}: at selection (after reasoning)")
    ax.set_xlabel("list position k")
    ax.set_ylabel("selection entropy H_k (nats)")
    ax.set_title("Entropy by list position")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / f"{prefix}_entropy_by_position.png"))

    reasoning = {n: p for n, p in profiles.items() if any(s > 0 for s in p["steps"])}
    if reasoning:
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        for name, p in reasoning.items():
            ax.plot(range(1, len(p["steps"]) + 1), p["steps"], marker="o", ms=3, label=name)
        ax.set_xlabel("list position k")
        ax.set_ylabel("mean latent reasoning steps")
        ax.set_title("Reasoning steps per position")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"{prefix}_steps_by_position.png"))

        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
        for name, p in reasoning.items():
            axes[0].plot(range(1, len(p["temp_select"]) + 1), p["temp_select"], marker="o", ms=3, label=name)
            if p.get("temp_reason_by_step"):
                axes[1].plot(range(1, len(p["temp_reason_by_step"]) + 1), p["temp_reason_by_step"], marker="o", ms=3, label=name)
        axes[0].set_xlabel("list position k")
        axes[0].set_ylabel("selection temperature")
        axes[0].set_title("Exploit: temperature at selection")
        axes[1].set_xlabel("reasoning step s")
        axes[1].set_ylabel("reasoning temperature")
        axes[1].set_title("Explore: temperature on reasoning steps")
        for a in axes:
            a.legend(fontsize=7)
        paths.append(_save(fig, out / f"{prefix}_temperature.png"))
    return paths
