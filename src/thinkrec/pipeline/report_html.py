"""A self-contained HTML report of a run directory: ``runs/<name>/report.html``, next to ``report.md``.

One file that opens anywhere (mail it, attach it to an issue): CSS inline, every plot an inline base64 PNG
(matplotlib Agg), no external URL. It reads what :func:`thinkrec.pipeline.report.write_report` reads, and each
section appears only when its files exist:

- at the top, the funnel's final list and why (``funnel.json``), the stages that lost to their input first;
- the final list and every single stage on test with 95 % CIs and paired tests (``eval/metrics.json``);
- one section per stage: data, SASRec, Semantic IDs (``sids/report.json``), each generative retriever, the
  merged candidates, re-ranking (``rerank/metrics.json``: metrics, paired tests, entropy / reasoning-step /
  temperature plots, validation curves), the LLM re-ranker (``llm/metrics.json``);
- stage wall times (``timings.json``) as a table and a bar plot.

Every string read from a file is HTML-escaped (model and dataset names, paths, the funnel's reasons).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from thinkrec.utils.io import atomic_file, read_json

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 28px 40px;background:#fff}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:30px 0 8px;padding-top:10px;border-top:1px solid #dde1e6}
h3{font-size:15px;margin:18px 0 6px}.sub{color:#5b6670;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d5dae0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.final td{font-weight:600;background:#eef7ee}.ci{color:#6b7782;font-weight:400;font-size:11.5px}
.tw{overflow-x:auto;max-width:100%}td:first-child{white-space:nowrap}
.box{border:2px solid #3a8a3a;background:#f1f9f1;border-radius:6px;padding:10px 16px;margin:12px 0}
.box.lost{border-color:#c0392b;background:#fdf1ef}.box h2{border:0;margin:2px 0 6px;padding:0}
.final-name{font-size:20px;font-weight:700}.why{color:#39434c}
nav{font-size:13px;margin:6px 0 10px}nav a{margin-right:12px;color:#245a8f}
img{max-width:100%;height:auto;border:1px solid #e3e6ea;margin:4px 0 10px}
.note{color:#5b6670;font-size:12.5px}.err{color:#a02a1d;font-size:12.5px}
pre{background:#f3f4f6;padding:8px;overflow-x:auto;font-size:12px}
"""


# ---------------------------------------------------------------------------------------------- building blocks
class Html(str):
    """A string that is already HTML (built here, its file strings escaped): not escaped again."""


def esc(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def num(v: Any, digits: int = 4) -> str:
    """Numbers as the Markdown report writes them: floats with 4 decimals; ints as they are; None as –."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def with_ci(v: float, ci: Sequence[float] | None) -> Html:
    if not ci:
        return esc(num(v))
    return Html(f"{esc(num(v))}<br><span class=ci>[{esc(num(ci[0]))}, {esc(num(ci[1]))}]</span>")


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], numeric_from: int = 1,
          row_class: Callable[[int], str] | None = None) -> Html:
    """A table; cells from column ``numeric_from`` on are right-aligned. Cells not :class:`Html` are escaped."""
    out = ["<div class=tw><table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = row_class(i) if row_class else ""
        out.append(f"<tr class={cls}>" if cls else "<tr>")
        out += [f"<td class=n>{esc(c)}</td>" if j >= numeric_from else f"<td>{esc(c)}</td>" for j, c in enumerate(row)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return Html("".join(out))


def para(*parts: Any, cls: str | None = None) -> Html:
    return Html((f"<p class={cls}>" if cls else "<p>") + "".join(esc(p) for p in parts) + "</p>")


def bold(text: Any) -> Html:
    return Html(f"<b>{esc(text)}</b>")


def image(png: bytes | None, alt: str) -> Html:
    if not png:
        return Html("")
    return Html(f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def png_file(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() and path.stat().st_size > 0 else None


def fig_png(fig: Any) -> bytes:
    """A matplotlib Figure (Agg canvas) as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def new_figure(w: float, h: float) -> Any:
    # Figure + Agg canvas directly: no pyplot state, no backend switch in the caller's process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _json(path: Path) -> Any:
    return read_json(path) if path.exists() else None


# ---------------------------------------------------------------------------------------------- plots
def barh_plot(labels: Sequence[str], values: Sequence[float], xlabel: str, title: str,
              ci: Sequence[Sequence[float] | None] | None = None, highlight: int | None = None) -> bytes:
    fig = new_figure(6.6, 0.9 + 0.32 * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(labels)))[::-1]
    colors = ["tab:green" if i == highlight else "tab:blue" for i in range(len(labels))]
    err = None
    if ci and any(c for c in ci):
        err = [[max(0.0, v - c[0]) if c else 0.0 for v, c in zip(values, ci, strict=True)],
               [max(0.0, c[1] - v) if c else 0.0 for v, c in zip(values, ci, strict=True)]]
    ax.barh(y, values, color=colors, xerr=err, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333"})
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig_png(fig)


def curves_plot(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str) -> bytes | None:
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig = new_figure(6.4, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    for name, pts in series.items():
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig_png(fig)


def training_curve_png(root: Path, history_file: Path, name: str, title: str) -> bytes | None:
    """``plots/<name>_training.png`` (:func:`thinkrec.pipeline.report.plot_training_curve`), redrawn when older
    than its history."""
    from thinkrec.pipeline.report import plot_training_curve

    path = root / "plots" / f"{name}_training.png"
    if not path.exists() or path.stat().st_mtime < history_file.stat().st_mtime:
        history = read_json(history_file)
        if not history or plot_training_curve(history, path, title) is None:
            return None
    return png_file(path)


# ---------------------------------------------------------------------------------------------- sections
def _top(root: Path, test: dict[str, Any] | None) -> list[Html]:
    """The final list the funnel serves and why; the stages that lost to their input, first and in red."""
    f = _json(root / "funnel.json")
    funnel = (test or {}).get("funnel") or {}
    final = (f or {}).get("final", funnel.get("final"))
    if not f and not funnel:
        return []
    out: list[Html] = []
    lost = (f or {}).get("lost", [])
    if lost:
        out.append(Html("<div class='box lost'><h2 id=lost>Stages that lost to their input on validation "
                        "(not used by the served funnel)</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in lost)
                        + "</ul></div>"))
    body = [Html("<div class=box><h2 id=final>The final list</h2>")]
    if final is not None:
        body.append(Html(f"<p>Served: <span class=final-name>{esc(final)}</span></p>"))
    why = (f or {}).get("final_why") or funnel.get("why")
    if why:
        body.append(para(why, cls="why"))
    if f:
        if not lost and "final" in f:
            body.append(para(bold("Every stage of the served funnel matched or beat its input on validation.")))
        items = [("retriever", f.get("retriever"), f.get("retriever_why")),
                 ("re-ranker", f.get("reranker") or "none (the retriever’s order)", f.get("reranker_why")),
                 ("LLM", f.get("llm") or "not used", f.get("llm_why"))]
        if "seen" in f:
            items.append(("seen items", "excluded" if f["seen"]["exclude"] else "kept", f["seen"]["why"]))
        body.append(Html("<ul>" + "".join(f"<li>{esc(k)}: <b>{esc(v)}</b>" + (f" — {esc(w)}" if w else "") + "</li>"
                                          for k, v, w in items) + "</ul>"))
        comparison = f.get("comparison")
        if comparison:
            body.append(para("Validation (comparison slice) by configuration:", cls="note"))
            body.append(table(["configuration", f.get("metric", "ndcg@10")],
                              [[k, num(v)] for k, v in comparison.items()],
                              row_class=lambda i, keys=list(comparison): "final" if keys[i] == final else ""))
    funnel_models = funnel.get("models") or {}
    if final in funnel_models:
        m = funnel_models[final]["metrics"]
        body.append(para("On test (every test user): ", Html(", ".join(f"{esc(k)} <b>{esc(num(v))}</b>" for k, v in m.items()))))
    body.append(Html("</div>"))
    return out + body


def _data(root: Path) -> list[Html]:
    marker = _json(root / "stages" / "data.json")
    if not marker:
        return []
    st = marker["info"]["stats"]
    return [Html("<h2 id=data>Data</h2>"), table(["statistic", "value"], [
        [k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else num(v)] for k, v in st.items()])]


def _final_list(test: dict[str, Any]) -> list[Html]:
    funnel = test.get("funnel")
    if not funnel or not funnel.get("models"):
        return []
    first = next(iter(funnel["models"].values()))["metrics"]
    keys = list(first)
    final = funnel["final"]
    rows, labels, vals, cis = [], [], [], []
    main = funnel.get("metric", "ndcg@10")
    served_row, served_bar = None, None
    for name, r in funnel["models"].items():
        label = f"funnel ({name}) — served" if name == final else f"funnel-{name}"
        # a single source that won on validation is served as it is: its own CIs
        ci = r.get("ci95") or (test.get(name, {}).get("ci95", {}) if name == final else {})
        if name == final:
            served_row = len(rows)
        rows.append([label, *(with_ci(r["metrics"][k], ci.get(k)) if k in r["metrics"] else "" for k in keys)])
        if main in r["metrics"]:
            served_bar = len(labels) if name == final else served_bar
            labels.append(label)
            vals.append(r["metrics"][main])
            cis.append(ci.get(main))
    for name, r in test.items():
        if name not in ("paired_tests", "funnel") and isinstance(r, dict) and "metrics" in r:
            rows.append([f"{name} (alone, full ranking)",
                         *(with_ci(r["metrics"][k], r.get("ci95", {}).get(k)) if k in r["metrics"] else "" for k in keys)])
            if main in r["metrics"]:
                labels.append(name)
                vals.append(r["metrics"][main])
                cis.append(r.get("ci95", {}).get(main))
    out = [Html("<h2 id=final-test>The final list on test (merged candidates → re-ranking), every test user</h2>"),
           para("Served: ", bold(final), " — ", funnel.get("why") or ""),
           table(["list", *keys], rows, row_class=lambda i: "final" if i == served_row else ""),
           para("Brackets: 95 % bootstrap confidence interval over users.", cls="note")]
    tests = funnel.get("paired_tests", {})
    if tests:
        out.append(Html(f"<h3>Paired tests: the served funnel vs every single source ({esc(funnel.get('metric', ''))})</h3>"))
        out.append(_paired_table(tests))
    if labels:
        out.append(image(barh_plot(labels, vals, main, f"Test {main} with 95 % CI", cis, served_bar), f"test {main}"))
    return out


def _paired_table(tests: dict[str, dict[str, Any]], p_keys: Sequence[str] = ("p_bootstrap", "p_ttest", "p_wilcoxon")) -> Html:
    names = {"p_bootstrap": "p (bootstrap)", "p_ttest": "p (t-test)", "p_wilcoxon": "p (Wilcoxon)"}
    keys = [k for k in p_keys if any(k in t for t in tests.values())]
    rows = []
    for pair, t in tests.items():
        rows.append([pair.replace("_vs_", " vs "), f"{t['diff']:+.4f}",
                     f"[{t['diff_low']:+.4f}, {t['diff_high']:+.4f}]" if "diff_low" in t else "",
                     *(f"{t[k]:.4g}" if k in t else "" for k in keys), str(t.get("n", ""))])
    return table(["pair", "diff", "95 % CI of diff", *(names[k] for k in keys), "n"], rows)


def _test_metrics(test: dict[str, Any], split: str) -> list[Html]:
    models = [k for k, v in test.items() if k not in ("paired_tests", "funnel") and isinstance(v, dict) and "metrics" in v]
    if not models:
        return []
    keys = list(test[models[0]]["metrics"])
    rows = [[name, *(with_ci(test[name]["metrics"][k], test[name].get("ci95", {}).get(k)) if k in test[name]["metrics"]
                     else "" for k in keys), num(test[name].get("users_per_s"), 0)] for name in models]
    out = [Html(f"<h2 id=test>Test metrics of every stage ({esc(split)} split, full ranking)</h2>"),
           table(["model", *keys, "users/s"], rows),
           para("Brackets: 95 % bootstrap confidence interval over users.", cls="note")]
    if test.get("paired_tests"):
        out += [Html("<h3>Paired tests: the best single model vs the others (NDCG@10)</h3>"),
                _paired_table(test["paired_tests"])]
    return out


def _sasrec(root: Path) -> list[Html]:
    hist = root / "sasrec" / "history.json"
    if not hist.exists():
        return []
    tm = _json(root / "sasrec" / "train_metrics.json") or {}
    wall = (_json(root / "stages" / "sasrec.json") or {}).get("wall_s")
    return [Html("<h2 id=sasrec>SASRec</h2>"),
            para(f"{tm.get('epochs', '?')} epochs, {num(tm.get('s_per_epoch'), 1)} s/epoch, {num(wall, 1)} s in all; "
                 f"best valid NDCG@10 {num(tm.get('best_valid_ndcg@10'))}"),
            image(training_curve_png(root, hist, "sasrec", "SASRec training"), "SASRec training")]


LEVEL_COLUMNS = ("level", "K", "used", "utilization", "entropy (bits)", "max entropy", "perplexity", "largest code share")


def _sids(root: Path) -> list[Html]:
    rep = _json(root / "sids" / "report.json")
    md = root / "sids" / "report.md"
    if rep is None and not md.exists():
        return []
    out = [Html("<h2 id=sids>Semantic IDs</h2>")]
    if rep is None:  # an older run: the Markdown report as it is
        out.append(Html(f"<pre>{esc(md.read_text())}</pre>"))
    else:
        out.append(para("method ", bold(rep.get("method", "?")), f", {rep.get('n_items', '?')} items, "
                        f"{rep.get('n_levels', '?')} levels, codebook sizes {esc(rep.get('codebook_size', ''))}"))
        out.append(table(LEVEL_COLUMNS, [[lv["level"], lv["codebook_size"], lv["used"], f"{lv['utilization']:.2%}",
                                          f"{lv['entropy_bits']:.3f}", f"{lv['max_entropy_bits']:.3f}",
                                          f"{lv['perplexity']:.1f}", f"{lv['max_share']:.2%}"] for lv in rep["levels"]]))
        rows: list[list[Any]] = [
            ["unique tuples before collision handling (collision-free share)", f"{rep['unique_before_dedup']:.2%}"],
            ["items alone in their tuple", f"{rep['items_alone_share']:.2%}"],
            ["max items per tuple (largest collision)", rep["max_items_per_tuple"]],
            ["mean codebook utilization", f"{rep['utilization_mean']:.2%}"] if "utilization_mean" in rep else None,
        ]
        for key, name in (("collision_strategy", "collision strategy"), ("sid_length", "SID length"),
                          ("n_reassigned", "items reassigned"), ("dedup_level_size", "dedup level size"),
                          ("recon_mse", "reconstruction MSE (per element)"), ("recon_rel", "relative reconstruction error"),
                          ("fit_s", "fit time (s)"), ("embed_s", "embedding time (s)"), ("embed_dim", "embedding dim")):
            if rep.get(key) is not None:
                rows.append([name, num(rep[key])])
        for key, name in (("semantic_l1", "level-1 codes"), ("semantic_l12", "level-1,2 prefixes")):
            if key in rep:
                s = rep[key]
                rows.append([f"category purity, {name} (random assignment)", f"{s['purity']:.4f} ({s['purity_random']:.4f})"])
                rows.append([f"category NMI, {name} (random assignment)", f"{s['nmi']:.4f} ({s['nmi_random']:.4f})"])
        out.append(table(["metric", "value"], [r for r in rows if r is not None]))
    out.append(image(png_file(root / "sids" / "code_usage.png"), "code usage per level"))
    return out


def _retrievers(root: Path) -> list[Html]:
    from thinkrec.pipeline.scorers import SCORERS

    out: list[Html] = []
    for name in (n for n in SCORERS if SCORERS.get(n).generative):
        rdir = root / SCORERS.get(name).folder(name)
        hist = rdir / "history.json"
        if not hist.exists():
            continue
        label = {"s2gr": "S²GR", "tiger": "TIGER"}.get(name, name)
        tm = _json(rdir / "train_metrics.json") or {}
        history = read_json(hist)
        last = history[-1] if history else {}
        parts = ", ".join(f"{k} {last[k]:.3f}" for k in ("rec", "align", "nce", "reg", "item") if k in last)
        out += [Html(f"<h2 id=retrieval-{esc(name)}>{esc(label)} retriever</h2>"),
                para(f"{tm.get('epochs', '?')} epochs, {num(tm.get('train_s'), 1)} s of training "
                     f"({num(tm.get('samples_per_s'), 0)} samples/s), best valid NDCG@10 {num(tm.get('best_valid_ndcg@10'))}"
                     + (f"; last epoch losses: {parts}" if parts else ""))]
        rescore = _json(rdir / "rescore.json")
        if rescore:
            by = rescore.get("valid_ndcg@10_by_weight", {})
            out.append(para(f"beams re-scored with the item head, weight {rescore.get('weight')} "
                            f"(beam {rescore.get('beam', '?')}" + (", tuned on validation" if rescore.get("tuned") else "") + ")"))
            if by:
                out.append(table(["re-score weight", "valid NDCG@10"], [[k, num(v)] for k, v in by.items()], numeric_from=0))
        out.append(image(training_curve_png(root, hist, name, f"{label} training"), f"{label} training"))
    return out


def _candidates(root: Path) -> list[Html]:
    info = _json(root / "candidates" / "info.json")
    if not info:
        return []
    k = info.get("k")
    out = [Html("<h2 id=candidates>Merged candidates</h2>"),
           para(f"sources {', '.join(info.get('sources', []))}; K = {k} merged from {info.get('per_source')} per source")]
    for part in ("valid", "test"):
        p = info.get(part)
        if not p:
            continue
        rows = [["merged", num(p.get(f"recall@{k}")), num(p.get("recall@10")), ""]]
        for s in info.get("sources", []):
            rows.append([s, num(p.get("source_recall", {}).get(s)), num(p.get("source_recall@10", {}).get(s)),
                         num(p.get("source_recall_in_merged", {}).get(s))])
        out += [Html(f"<h3>{esc(part)} ({esc(p.get('requests', '?'))} requests)</h3>"),
                table(["list", f"recall@{k}", "recall@10", "its target kept in the merged list"], rows)]
    return out


def _rerank(root: Path) -> list[Html]:
    from thinkrec.pipeline.report import RERANK_COLUMNS

    res = _json(root / "rerank" / "metrics.json")
    if not res or not res.get("models"):
        return []
    models = res["models"]
    cols = [(k, label) for k, label in RERANK_COLUMNS if any(k in m for m in models.values())]
    n = res.get("n_lists", {})
    what = f"funnel: the {res['candidates']} retriever's top-K" if res.get("candidates") else "logged impressions"
    valid = res.get("valid", {})
    vkey = "ndcg@5" if any("ndcg@5" in v for v in valid.values()) else None
    out = [Html(f"<h2 id=rerank>Re-ranking ({esc(what)})</h2>"),
           para(f"{n.get('train', 0)} train / {n.get('valid', 0)} valid / {n.get('test', 0)} test lists; metrics on the "
                "test lists (LibRerank MAP/NDCG over labels; funnel lists: R@1/R@5 of the true item)."),
           table(["model", *(label for _, label in cols), *(["valid N@5 (comparison slice)"] if vkey else [])],
                 [[name, *(num(m[k]) if k in m else "" for k, _ in cols),
                   *([num(valid.get(name, {}).get(vkey))] if vkey else [])] for name, m in models.items()])]
    tests = res.get("paired_tests_ndcg@5", {})
    if tests:
        out += [Html("<h3>Paired tests on per-list NDCG@5 (EGLR − other)</h3>"),
                _paired_table(tests)]
    plots = [(Path(p).stem, png_file(root / p)) for p in res.get("plots", [])]
    if res.get("profiles") and (not plots or not all(b for _, b in plots)):  # redraw what is missing
        from thinkrec.rerank.plots import plot_profiles

        with tempfile.TemporaryDirectory() as tmp:
            plots = [(p.stem, png_file(p)) for p in plot_profiles(res["profiles"], tmp)]
    if plots:
        out.append(Html("<h3>Reasoning of the generators: entropy, latent reasoning steps, temperature</h3>"))
        out += [image(b, stem.replace("_", " ")) for stem, b in plots]
    series = {}
    for name in models:
        h = _json(root / "rerank" / name / "history.json") or []
        series[name] = [(i + 1, e["valid_ndcg@5"]) for i, e in enumerate(h) if "valid_ndcg@5" in e]
    png = curves_plot(series, "epoch (supervised, then RL)", "valid NDCG@5", "Re-ranker training: validation NDCG@5")
    if png:
        out += [Html("<h3>Training curves</h3>"), image(png, "re-ranker training")]
    gain = _json(root / "rerank" / "lightgbm" / "importance.json")
    if gain:
        top = sorted(gain.items(), key=lambda kv: -kv[1])[:20]
        png = barh_plot([k for k, _ in top], [v / (sum(gain.values()) or 1.0) for _, v in top],
                        "share of total gain", "LightGBM feature importance (top 20)")
        out += [Html("<h3>LightGBM feature importance (total gain)</h3>"), image(png, "LightGBM feature importance")]
    return out


def _llm(root: Path) -> list[Html]:
    res = _json(root / "llm" / "metrics.json")
    if not res:
        return []
    rows = []
    for name, m in res["metrics"].items():
        rows.append([name, num(m["recall@1"]), num(m["recall@5"]), num(m["ndcg@5"]),
                     num(res.get("metrics_all_lists", {}).get(name, {}).get("ndcg@5")), m.get("malformed", ""),
                     num(m.get("wall_s"), 1) if "wall_s" in m else ""])
    out = [Html(f"<h2 id=llm>LLM re-ranker (GR2, {esc(res['model'])})</h2>"),
           para(f"{res['eval_lists_with_target']} test lists that contain the true item (coverage of all test lists "
                f"{res['coverage']:.3f}); one greedy, constrained answer per list."),
           table(["phase", "R@1", "R@5", "N@5", "N@5 (all lists)", "malformed", "eval s"], rows)]
    traces = res.get("traces", {})
    if traces:
        out.append(table(["sampling", "teacher", "accepted", "acceptance", "tries / sample", "malformed"],
                         [[mode, t.get("teacher", ""), t.get("accepted", ""), num(t.get("acceptance_rate"), 2),
                           num(t.get("tries_per_sample"), 2), t.get("malformed", "")] for mode, t in traces.items()],
                         numeric_from=2))
    if res.get("timings"):
        out.append(table(["phase", "seconds"], [[k.removesuffix("_s"), num(v, 1)] for k, v in res["timings"].items()]))
    return out


def _timings(root: Path, timings: dict[str, float] | None) -> list[Html]:
    t = timings if timings is not None else _json(root / "timings.json")
    if not t:
        return []
    total = sum(float(v) for v in t.values())
    return [Html("<h2 id=timings>Stage wall times</h2>"),
            table(["stage", "seconds", "share"], [[k, num(float(v), 1), f"{float(v) / max(total, 1e-9):.1%}"] for k, v in t.items()]
                  + [[Html("<b>total</b>"), num(total, 1), ""]]),
            image(barh_plot(list(t), [float(v) for v in t.values()], "seconds", "Wall time per stage"), "stage wall times")]


# ---------------------------------------------------------------------------------------------- the document
def _guarded(name: str, fn: Callable[[], list[Html]]) -> list[Html]:
    """A section whose files do not have the expected shape says so instead of losing the whole report."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the report is written after every stage; one bad file must not hide the rest
        return [Html(f"<h2>{esc(name)}</h2>"),
                para(f"this section could not be rendered: {type(exc).__name__}: {exc}", cls="err"),
                Html(f"<pre class=err>{esc(traceback.format_exc(limit=3))}</pre>")]


def render_html(root: str | Path, timings: dict[str, float] | None = None) -> str:
    """The report of run directory ``root`` as one HTML string (``timings``: instead of ``timings.json``)."""
    root = Path(root)
    evaluated = _json(root / "eval" / "metrics.json")
    top = _json(root / "metrics.json") or {}
    test = evaluated if evaluated is not None else top.get("test")
    dataset = top.get("dataset") or ((_json(root / "stages" / "data.json") or {}).get("info", {}).get("stats", {}).get("dataset"))
    sections: list[tuple[str, Callable[[], list[Html]]]] = [
        ("final list", lambda: _top(root, test)),
        ("data", lambda: _data(root)),
        ("final list on test", lambda: _final_list(test) if test else []),
        ("test metrics", lambda: _test_metrics(test, top.get("split", "")) if test else []),
        ("SASRec", lambda: _sasrec(root)),
        ("Semantic IDs", lambda: _sids(root)),
        ("retrievers", lambda: _retrievers(root)),
        ("candidates", lambda: _candidates(root)),
        ("re-ranking", lambda: _rerank(root)),
        ("LLM re-ranker", lambda: _llm(root)),
        ("timings", lambda: _timings(root, timings)),
    ]
    body: list[Html] = []
    for name, fn in sections:
        body += _guarded(name, fn)
    # a table of contents from the section headings (local anchors only)
    anchors = [f'<a href="#{m.group(1)}">{m.group(2).split(" (")[0]}</a>'
               for m in re.finditer(r"<h2 id=([\w-]+)>(.*?)</h2>", "".join(body))]
    title = f"thinkrec run {root.name}"
    head = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body><main>")
    sub = ", ".join(x for x in (f"dataset {dataset}" if dataset else "", f"{top.get('split')} split" if top.get("split") else "",
                                f"run directory {root}") if x)
    nav = Html("<nav>" + "".join(anchors) + "</nav>") if anchors else Html("")
    return (head + f"<h1>{esc(title)}</h1>" + para(sub, cls="sub") + nav + "\n".join(body) + "</main></body></html>\n")


def write_html_report(root: str | Path, config: Any = None, timings: dict[str, float] | None = None) -> Path:
    """Write ``<root>/report.html`` atomically; returns its path. ``timings`` (stage → seconds) instead of
    ``timings.json`` when given (the pipeline passes the running invocation's)."""
    root = Path(root)
    text = render_html(root, timings)
    out = root / "report.html"
    with atomic_file(out) as fh:
        fh.write(text)
    return out
