"""Re-ranking benchmark: EGLR vs initial order, DNN, PRM, DLCM, Seq2Slate and EG-Rerank, with EGLR ablations.

    python benchmarks/rerank.py [--datasets synthetic,mind,beauty-funnel] [--models ...] [--ablations]
        [--retriever runs/bench-retrieval/beauty/tiger] [--set rerank.train.epochs=20 ...] [--seeds 0,1,2] [--tag=+x]

Every row is one run directory, ``<out>/<dataset>/<variant><tag>``, whose nodes (``data``, ``rerank/lists``,
``rerank/evaluator``, ``rerank/<model>``) the stage graph trains and caches; the variants of a dataset share the
lists (and, where their configs agree, the evaluator) through ``common.share_nodes``. An ablation is a config
override of a registered re-ranker (:data:`ABLATIONS`). The re-rankers' settings are the library defaults
(``rerank.model`` / ``rerank.train`` reset, not the presets' demo sizes) + ``--set``.

Datasets (:data:`DATASETS`):
* ``synthetic`` — ``configs/synthetic.yaml``'s generator with 20,000 impressions of 20 items, whose true click model
  gives every re-ranked list's expected clicks; ``synthetic-randomlog`` — the same, logged in random order;
* ``mind`` — MIND-small subset impressions (first 50 shown news per impression), split by time 80/10/10;
* ``beauty-funnel`` — Amazon Beauty: the top-K (``rerank.k``) of the retriever trained in the run directory
  ``--retriever`` (``benchmarks/retrieval_beauty.py``'s; this run starts from its config and shares its data, SIDs
  and model, so ``--set retrieval.beam=40 --set retrieval.rescore_weight=2`` re-scores without retraining);
  training lists from the validation-position targets (10 % of users held out for early stopping), test lists
  from the test targets.
Metrics: MAP@5/10, NDCG@5/10 (LibRerank), the evaluator's score, expected clicks (synthetic), R@1/R@5 and N@5 of
the true item (funnel); latency per list (batch 1, median); paired tests on per-list NDCG@5 (and expected clicks).
``--seeds``: re-ranker training seeds, each the seed ``run.seed = s`` gives the re-rankers; the run's own is the
graph's node, the others train on the same lists and evaluator; rows report the seeds' means.
Writes benchmarks/results/rerank.json and plots to benchmarks/results/plots/.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    bench_config,
    node_info,
    open_variant,
    peak_rss_mb,
    row,
    save_rows,
    share_nodes,
    upstream_closure,
    variant_dir,
)
from thinkrec.eval.stats import paired_test  # noqa: E402
from thinkrec.pipeline.config import stage_seed  # noqa: E402
from thinkrec.pipeline.run import run_pipeline  # noqa: E402
from thinkrec.rerank.lists import RerankLists  # noqa: E402
from thinkrec.rerank.models import RERANKERS  # noqa: E402
from thinkrec.rerank.plots import plot_profiles  # noqa: E402
from thinkrec.rerank.stage import (  # noqa: E402
    evaluate_orders,
    fit_and_score,
    load_reranker,
    reference_orders,
)
from thinkrec.rerank.train import rerank_orders, reward_kind  # noqa: E402
from thinkrec.utils.config import to_dict  # noqa: E402
from thinkrec.utils.io import read_json, write_json  # noqa: E402

SYNTHETIC = "configs/synthetic.yaml"
IMPRESSIONS = ["stages=[data, rerank]", "rerank.source=impressions"]  # no SIDs stage: candidate features without item vectors
# benchmark dataset: (preset, overrides); beauty-funnel's preset is the --retriever run's config.yaml
DATASETS: dict[str, tuple[str | None, list[str]]] = {
    "synthetic": (SYNTHETIC, ["data.options={n_impressions: 20000, logging_noise: 1.0}", *IMPRESSIONS]),
    # the same users, candidates and click model, but each list is displayed (and its clicks logged) in a uniformly
    # random order — logged clicks are then free of the logger's order on average, the condition under which
    # logged-click metrics are an unbiased test (Open Bandit's "random" policy)
    "synthetic-randomlog": (SYNTHETIC, ["data.options={n_impressions: 20000, logging_noise: 10000.0}", *IMPRESSIONS]),
    "mind": (None, ["data.dataset=mind", *IMPRESSIONS]),
    "beauty-funnel": (None, ["stages=[data, tokenize, retrieval, rerank]", "rerank.source=funnel"]),
}
RERANK_DEFAULTS = ["rerank.model={}", "rerank.train={}"]  # the library's re-ranker settings, not a preset's demo sizes
# ablation name: (registered re-ranker, config overrides)
ABLATIONS: dict[str, tuple[str, list[str]]] = {
    "eglr-smax0": ("eglr", ["rerank.model.s_max=0"]),
    "eglr-smax1": ("eglr", ["rerank.model.s_max=1"]),
    "eglr-fixed-temp": ("eglr", ["rerank.model.dynamic_temperature=false"]),
    "eglr-always-reason": ("eglr", ["rerank.model.always_reason=true"]),
    "eglr-residual": ("eglr", ["rerank.model.reason_residual=true"]),
}
PROFILED = ("eglr", "eglr-smax0", "egrerank", "eglr-always-reason")  # reasoning profiles plotted


def _click_model(ctx):
    """The synthetic generator's true click model (impression lists of a generated dataset), else None."""
    from thinkrec.data.synthetic import ClickModel

    ds = ctx.get_dataset()
    if ds.meta.get("generator") == "thinkrec.data.synthetic" and ctx.config.rerank.source == "impressions":
        return ClickModel.from_dataset(ds)
    return None


def run_variant(dname: str, label: str, base: str, overrides: list[str], args: argparse.Namespace,
                sources: list[Path], preset: str | None) -> tuple[dict, dict, Path]:
    """Train (or reuse) one variant's run directory; returns its row, per-list metrics (seed means) and folder."""
    cfg = bench_config(preset, [*RERANK_DEFAULTS, *DATASETS[dname][1], f"rerank.models=[{base}]", *overrides,
                                *args.set], args.threads)
    root = variant_dir(args.out, dname, label)
    ctx = open_variant(cfg, root)
    for src in sources:
        share_nodes(ctx, src, upstream_closure(ctx, "rerank/evaluator"))
    run_pipeline(cfg, ["rerank"], run_dir=root)

    ctx = open_variant(cfg, root)  # what the nodes wrote, loaded from the run directory
    rc, device = ctx.config.rerank, ctx.config.run.device
    train, valid, test = (RerankLists.load(root / "rerank" / "lists" / p) for p in ("train", "valid", "test"))
    _, evaluator = load_reranker(root / "rerank" / "evaluator", device)
    click_model = _click_model(ctx)
    kind = reward_kind(rc.train, train)
    seeds = args.seeds or [cfg.run.seed]
    per_seed, metrics, walls, profile = [], [], [], None
    for s in seeds:
        if s == cfg.run.seed:  # the graph's node
            saved = read_json(root / "rerank" / base / "metrics.json")
            _, model = load_reranker(root / "rerank" / base, device)
            per_seed.append(evaluate_orders(test, rerank_orders(model, test, device=device), evaluator, kind, click_model))
            metrics.append(saved["test"])
            walls.append(node_info(ctx, f"rerank/{base}").get("wall_s", saved["test"]["train_s"]))
            profile = profile or saved.get("profile")
        else:  # another training seed on the same lists and evaluator
            t = time.perf_counter()
            fit = fit_and_score(base, train, valid, test, rc.model, replace(rc.train, seed=stage_seed(s, "rerank")),
                                evaluator, click_model, device, log=print, label=f"{label}@seed{s}")
            walls.append(time.perf_counter() - t)
            per_seed.append(fit.per_list)
            metrics.append(fit.metrics)
            profile = profile or fit.profile
    per_list = {k: np.mean([p[k] for p in per_seed], 0) for k in per_seed[0]}
    m = {k: round(float(np.mean([x[k] for x in metrics])), 5) for k in metrics[0]}
    m["peak_rss_mb"] = round(peak_rss_mb(), 1)
    extra = {}
    if len(seeds) > 1:
        extra["seeds"] = {str(s): {k: round(v, 5) for k, v in x.items()} for s, x in zip(seeds, metrics, strict=True)}
    if click_model is not None and base == "initial":  # orders that know the true click model: what do logged clicks say?
        extra["reference_orders"] = {}
        for ref, orders in reference_orders(test, click_model).items():
            per = evaluate_orders(test, orders, evaluator, kind, click_model)
            extra["reference_orders"][ref] = {k: round(float(v.mean()), 5) for k, v in per.items()}
            print(f"{dname} reference order {ref}: {extra['reference_orders'][ref]}", flush=True)
    ev = node_info(ctx, "rerank/evaluator")
    r = row("rerank", dname, base, m, float(np.sum(walls)), variant=label, run_dir=str(root),
            model_config=to_dict(rc.model), train_config=to_dict(rc.train), profile=profile,
            n_lists={"train": len(train), "valid": len(valid), "test": len(test)},
            evaluator={"train_s": round(ev.get("wall_s", 0.0), 1), "valid_logloss": ev.get("info", {}).get("valid_logloss")},
            **extra)
    print(label, {k: v for k, v in m.items()}, flush=True)
    return r, per_list, root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="synthetic,mind,beauty-funnel", help=f"of {', '.join(DATASETS)}")
    p.add_argument("--models", default=",".join(RERANKERS), help="registered re-rankers (rerank.models)")
    p.add_argument("--ablations", nargs="?", const="all", default="",
                   help=f"EGLR ablations: all or a comma-separated subset of {', '.join(ABLATIONS)}")
    p.add_argument("--retriever", default="runs/bench-retrieval/beauty/tiger",
                   help="beauty-funnel: a run directory of benchmarks/retrieval_beauty.py (its config and retriever)")
    p.add_argument("--set", action="append", default=[], help="RunConfig override, e.g. rerank.train.epochs=20")
    p.add_argument("--threads", type=int, default=2, help="run.threads")
    p.add_argument("--tag", default="", help="suffix for the variant names and run directories (keeps other rows)")
    p.add_argument("--out", default="runs/bench-rerank")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=None,
                   help="re-ranker training seeds (comma-separated; default run.seed); rows report the seeds' means")
    args = p.parse_args()
    ablations = [] if not args.ablations else list(ABLATIONS) if args.ablations == "all" else \
        [a.strip() for a in args.ablations.split(",") if a.strip()]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise SystemExit(f"--ablations: unknown {unknown}; choose from {', '.join(ABLATIONS)}")
    runs = [(m, m, []) for m in args.models.split(",") if m] + [(a, *ABLATIONS[a]) for a in ablations]
    rows = []
    for dname in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if dname not in DATASETS:
            raise SystemExit(f"unknown dataset {dname!r}; choose from {', '.join(DATASETS)}")
        preset, sources = DATASETS[dname][0], []
        if dname == "beauty-funnel":
            retriever = Path(args.retriever)
            if not (retriever / "config.yaml").exists():
                raise SystemExit(f"{retriever}: not a run directory (train it with benchmarks/retrieval_beauty.py)")
            preset, sources = str(retriever / "config.yaml"), [retriever]
        per_list, profiles = {}, {}
        for label, base, overrides in runs:
            r, per, root = run_variant(dname, label + args.tag, base, overrides, args, sources, preset)
            sources.append(root)
            rows.append(r)
            per_list[r["variant"]] = per
            if r["profile"] is not None and label in PROFILED:
                profiles[r["variant"]] = r["profile"]
            save_rows("rerank", rows, key="variant")
        main_label = "eglr" + args.tag
        if main_label in per_list:
            tests = {f"{main_label}_vs_{o}": {k: paired_test(per_list[main_label][k], v[k], 1000, seed=0)
                                                for k in ("ndcg@5", "expected_clicks") if k in v}
                     for o, v in per_list.items() if o != main_label}
            for key, t in tests.items():
                print(key, t, flush=True)
            for r in rows:
                if r["dataset"] == dname and r["variant"] == main_label:
                    r["paired_tests"] = tests
        if profiles:
            plot_profiles(profiles, RESULTS / "plots", prefix=f"rerank_{dname}{args.tag}")
            write_json(Path(args.out) / dname / f"profiles{args.tag}.json", profiles)
        save_rows("rerank", rows, key="variant")


if __name__ == "__main__":
    main()
