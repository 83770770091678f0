"""A short Markdown report of a run directory, with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinkrec.utils.io import atomic_file, atomic_path, read_json


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def plot_training_curve(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    if not epochs:
        return None
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    val = [(h["epoch"], h["valid_ndcg@10"]) for h in history if "valid_ndcg@10" in h]
    if val:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*val, strict=True), "s-", color="tab:orange", label="valid NDCG@10")
        ax2.set_ylabel("valid NDCG@10", color="tab:orange")
    ax1.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_report(root: str | Path, config: Any = None, timings: dict[str, float] | None = None) -> Path:
    """``report.md``; ``timings`` (stage → seconds) instead of ``timings.json`` when given."""
    root = Path(root)
    lines = [f"# thinkrec run `{root.name}`", ""]
    lines += _lost_stages(root)
    data_done = root / "stages" / "data.json"
    if data_done.exists():
        st = read_json(data_done)["info"]["stats"]
        lines += [
            "## Data",
            f"dataset **{st['dataset']}**: {st['users']:,} users, {st['items']:,} items, {st['interactions']:,} interactions "
            f"(sequence length {st['seq_len_min']}/{st['seq_len_mean']}/{st['seq_len_max']} min/mean/max)",
            "",
        ]
    metrics_file = root / "metrics.json"
    if metrics_file.exists():
        m = read_json(metrics_file)
        test = m["test"]
        models = [k for k in test if k not in ("paired_tests", "funnel")]
        if models:
            keys = list(test[models[0]]["metrics"])
            lines += [f"## Test metrics ({m.get('split', '')} split, full ranking)", "",
                      "| model | " + " | ".join(keys) + " | users/s |", "|---" * (len(keys) + 2) + "|"]
            for name in models:
                r = test[name]
                cells = [f"{r['metrics'][k]:.4f} [{r['ci95'][k][0]:.4f}, {r['ci95'][k][1]:.4f}]" for k in keys]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['users_per_s']:.0f} |")
            lines += ["", "Brackets: 95 % bootstrap confidence interval over users.", ""]
        for pair, t in test.get("paired_tests", {}).items():
            lines.append(
                f"- paired test {pair.replace('_vs_', ' vs ')} (NDCG@10): diff {t['diff']:+.4f} "
                f"[{t['diff_low']:+.4f}, {t['diff_high']:+.4f}], p(bootstrap) {t['p_bootstrap']:.4g}, "
                f"p(t) {t['p_ttest']:.4g}, p(Wilcoxon) {t['p_wilcoxon']:.4g}, n={t['n']}"
            )
        lines.append("")
        lines += _final_list_section(test)
    hist_file = root / "sasrec" / "history.json"
    if hist_file.exists():
        history = read_json(hist_file)
        tm = read_json(root / "sasrec" / "train_metrics.json")
        marker = root / "stages" / "sasrec.json"
        wall = read_json(marker)["wall_s"] if marker.exists() else float("nan")
        plot = plot_training_curve(history, root / "plots" / "sasrec_training.png", "SASRec training")
        lines += ["## SASRec training", "",
                  f"{tm['epochs']} epochs, {tm['s_per_epoch']:.1f} s/epoch, {wall:.1f} s in all; best valid NDCG@10 {tm['best_valid_ndcg@10']:.4f}", ""]
        if plot:
            lines += ["![SASRec training](plots/sasrec_training.png)", ""]
    sid_md = root / "sids" / "report.md"
    if sid_md.exists():
        body = sid_md.read_text().strip().splitlines()
        lines += ["## Semantic IDs", "", *[ln for ln in body if not ln.startswith("# ")], ""]
        if (root / "sids" / "code_usage.png").exists():
            lines += ["![code usage](sids/code_usage.png)", ""]
    from thinkrec.pipeline.scorers import SCORERS

    for name in (n for n in SCORERS if SCORERS.get(n).generative):
        rdir = root / SCORERS.get(name).folder(name)
        if not (rdir / "history.json").exists():
            continue
        history = read_json(rdir / "history.json")
        tm = read_json(rdir / "train_metrics.json")
        label = {"s2gr": "S²GR", "tiger": "TIGER"}.get(name, name)
        plot = plot_training_curve(history, root / "plots" / f"{name}_training.png", f"{label} training")
        last = history[-1] if history else {}
        parts = ", ".join(f"{k} {last[k]:.3f}" for k in ("rec", "align", "nce", "reg", "item") if k in last)
        lines += [f"## {label} retriever training", "",
                  f"{tm['epochs']} epochs, {tm['train_s']:.0f} s of training ({tm['samples_per_s']:.0f} samples/s), "
                  f"best valid NDCG@10 {tm['best_valid_ndcg@10']:.4f}; last epoch losses: {parts}", ""]
        if plot:
            lines += [f"![{label} training](plots/{name}_training.png)", ""]
    lines += _rerank_section(root)
    lines += _llm_section(root)
    lines += _funnel_section(root)
    if timings is None and (root / "timings.json").exists():
        timings = read_json(root / "timings.json")
    if timings:
        lines += ["## Stage timings", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        lines.append("")
    out = root / "report.md"
    with atomic_file(out) as fh:
        fh.write("\n".join(lines) + "\n")
    return out


RERANK_COLUMNS = (("ndcg@5", "NDCG@5"), ("ndcg@10", "NDCG@10"), ("map@5", "MAP@5"), ("map@10", "MAP@10"),
                  ("recall@1", "R@1"), ("recall@5", "R@5"), ("expected_clicks", "expected clicks (true model)"),
                  ("evaluator_score", "evaluator score"), ("reasoning_steps_per_list", "reasoning steps / list"),
                  ("latency_ms", "latency ms / list"), ("train_s", "train s"))


def _rerank_section(root: Path) -> list[str]:
    path = root / "rerank" / "metrics.json"
    if not path.exists():
        return []
    res = read_json(path)
    models = res.get("models", {})
    if not models:
        return []
    cols = [(k, label) for k, label in RERANK_COLUMNS if any(k in m for m in models.values())]
    n = res.get("n_lists", {})
    what = f"funnel: the {res['candidates']} retriever's top-K" if res.get("candidates") else "logged impressions"
    lines = [f"## Re-ranking ({what})", "",
             f"{n.get('train', 0)} train / {n.get('valid', 0)} valid / {n.get('test', 0)} test lists; metrics on the test lists "
             "(LibRerank MAP/NDCG over labels; funnel lists: R@1/R@5 of the true item).", "",
             "| model | " + " | ".join(label for _, label in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m[k]) if k in m else "" for k, _ in cols) + " |")
    lines.append("")
    tests = res.get("paired_tests_ndcg@5", {})
    if tests:
        lines += ["Paired tests on per-list NDCG@5 (EGLR − other): " + "; ".join(
            f"{k.removeprefix('eglr_vs_')} {t['diff']:+.4f} (p {t['p_ttest']:.3g})" for k, t in tests.items()), ""]
    for plot in res.get("plots", []):
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    return lines + _importance_lines(root)


def _importance_lines(root: Path, top: int = 20) -> list[str]:
    """The LightGBM ranker's feature importance (total gain), when the run trained it."""
    path = root / "rerank" / "lightgbm" / "importance.json"
    if not path.exists():
        return []
    gain = read_json(path)
    total = sum(gain.values()) or 1.0
    ranked = sorted(gain.items(), key=lambda kv: -kv[1])[:top]
    return [f"### LightGBM feature importance (total gain, top {min(top, len(gain))})", "",
            "| feature | gain share |", "|---|---|",
            *(f"| {name} | {v / total:.1%} |" for name, v in ranked), ""]


def _llm_section(root: Path) -> list[str]:
    path = root / "llm" / "metrics.json"
    if not path.exists():
        return []
    res = read_json(path)
    lines = [f"## LLM re-ranker (GR2, {res['model']})", "",
             f"{res['eval_lists_with_target']} test lists that contain the true item (coverage of all test lists "
             f"{res['coverage']:.3f}); one greedy, constrained answer per list.", "",
             "| phase | R@1 | R@5 | N@5 | N@5 (all lists) | changed share | Kendall τ to input | validation N@5 | "
             "malformed |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["metrics"].items():
        valid = m.get("valid", {}).get("ndcg@5")
        lines.append(f"| {name} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | {m['ndcg@5']:.4f} | "
                     f"{res['metrics_all_lists'][name]['ndcg@5']:.4f} | {m.get('changed_share', 0):.2f} | "
                     f"{m.get('kendall_tau', 1):.2f} | {'' if valid is None else f'{valid:.4f}'} | {m['malformed']} |")
    lines += ["", f"**Used by the funnel:** {res.get('deploy_why') or 'not validated'}", ""]
    for mode, t in res.get("traces", {}).items():
        lines.append(f"- {mode} sampling ({t['teacher']}): {t['accepted']} traces accepted, acceptance "
                     f"{t['acceptance_rate']:.2f}, {t['tries_per_sample']:.2f} tries per sample, {t['malformed']} malformed")
    lines.append("")
    return lines


def _lost_stages(root: Path) -> list[str]:
    """First lines of the report: every stage that did worse than its input on validation (so not served)."""
    path = root / "funnel.json"
    if not path.exists():
        return []
    f = read_json(path)
    lost = f.get("lost", [])
    if not lost:
        return ([f"**Every stage of the served funnel matched or beat its input on validation** (final list: "
                 f"{f['final']})", ""] if "final" in f else [])
    return ["**Stages that lost to their input on validation (not used by the served funnel):**", "",
            *[f"- {x}" for x in lost], "", f"Served final list: **{f.get('final')}**.", ""]


def _final_list_section(test: dict[str, Any]) -> list[str]:
    funnel = test.get("funnel")
    if not funnel:
        return []
    keys = [k for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10") if k in next(iter(funnel["models"].values()))["metrics"]]
    lines = ["## The final list (merged candidates → re-ranking), every test user", "",
             f"Served: **{funnel['final']}** — {funnel.get('why') or ''}", "",
             "| list | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in funnel["models"].items():
        label = f"funnel ({name})" if name == funnel["final"] else f"funnel-{name}"
        ci = r.get("ci95", {})
        lines.append(f"| {label} | " + " | ".join(
            f"{r['metrics'][k]:.4f}" + (f" [{ci[k][0]:.4f}, {ci[k][1]:.4f}]" if k in ci else "") for k in keys) + " |")
    for name, r in test.items():
        if name not in ("paired_tests", "funnel") and "metrics" in r:
            lines.append(f"| {name} (alone, full ranking) | " + " | ".join(f"{r['metrics'][k]:.4f}" for k in keys) + " |")
    lines.append("")
    for pair, t in funnel.get("paired_tests", {}).items():
        lines.append(f"- paired test {pair.replace('_vs_', ' vs ')} ({funnel['metric']}): diff {t['diff']:+.4f} "
                     f"[{t['diff_low']:+.4f}, {t['diff_high']:+.4f}], p(bootstrap) {t['p_bootstrap']:.4g}, n={t['n']}")
    lines.append("")
    return lines


def _funnel_section(root: Path) -> list[str]:
    path = root / "funnel.json"
    if not path.exists():
        return []
    f = read_json(path)
    return ["## The funnel `thinkrec.load` serves", "",
            f"- retriever: **{f.get('retriever')}** — {f.get('retriever_why', '')}",
            f"- re-ranker: **{f.get('reranker') or 'none (the retriever’s order)'}** — {f.get('reranker_why', '')}",
            f"- LLM: {f.get('llm_why', '')}",
            *([f"- seen items: **{'excluded' if f['seen']['exclude'] else 'kept'}** in every list, evaluated and "
               f"served — {f['seen']['why']}"] if "seen" in f else []), ""]
