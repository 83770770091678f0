"""Re-ranking benchmark: EGLR vs initial order, DNN, PRM, DLCM, Seq2Slate and EG-Rerank, with EGLR ablations.

    python benchmarks/rerank.py [--datasets synthetic,mind,beauty-funnel] [--models ...] [--ablations]
        [--retriever runs/bench-retrieval/beauty/tiger] [--data-root ../shared/data]

Datasets:
* ``synthetic`` — the built-in generator's impressions (``--synthetic-impressions`` lists of 20), whose true click
  model gives every re-ranked list's expected clicks; ``synthetic-randomlog`` — the same, logged in random order;
* ``mind`` — MIND-small subset impressions (first 50 shown news per impression), split by time 80/10/10;
* ``beauty-funnel`` — Amazon Beauty: the retriever's top-K (``--k``) per user; training lists from the
  validation-position targets (10 % of users held out for early stopping), test lists from the test targets.
Metrics: MAP@5/10, NDCG@5/10 (LibRerank), the evaluator's score, expected clicks (synthetic), R@1/R@5 and N@5 of
the true item (funnel); latency per list (batch 1, median); paired tests on per-list NDCG@5.
Writes benchmarks/results/rerank.json and plots to benchmarks/results/plots/.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, row, save_rows  # noqa: E402
from thinkrec.data import load_dataset  # noqa: E402
from thinkrec.data.splits import leave_one_out  # noqa: E402
from thinkrec.data.synthetic import ClickModel, SyntheticConfig, generate  # noqa: E402
from thinkrec.eval.stats import paired_test  # noqa: E402
from thinkrec.rerank.lists import RerankLists, item_categories  # noqa: E402
from thinkrec.rerank.models import RerankModelConfig  # noqa: E402
from thinkrec.rerank.plots import plot_profiles  # noqa: E402
from thinkrec.rerank.stage import (  # noqa: E402
    RerankStageConfig,
    evaluate_orders,
    fit_and_score,
    funnel_sets,
    impression_sets,
    reference_orders,
    scorer_top_k,
)
from thinkrec.rerank.train import RERANK_MODELS, RerankTrainConfig, reward_kind, train_evaluator  # noqa: E402
from thinkrec.utils.io import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# ablation name: (base model, RerankModelConfig overrides)
ABLATIONS: dict[str, tuple[str, dict]] = {
    "eglr-smax0": ("eglr", {"s_max": 0}),
    "eglr-smax1": ("eglr", {"s_max": 1}),
    "eglr-fixed-temp": ("eglr", {"dynamic_temperature": False}),
    "eglr-always-reason": ("eglr", {"always_reason": True}),
    "eglr-residual": ("eglr", {"reason_residual": True}),
}


def _retriever_scorer(path: Path, beam: int, dense_weight: float = 0.0):
    """A trained retriever folder (model.safetensors), or a benchmark checkpoint (last.pt + results row)."""
    from thinkrec.retrieval import GenerativeScorer, RetrieverConfig
    from thinkrec.retrieval.model import GenerativeRetriever
    from thinkrec.retrieval.train import load_retriever, save_retriever
    from thinkrec.tokenize.stage import load_tokenize
    from thinkrec.utils.config import from_dict
    from thinkrec.utils.io import read_json

    sids = load_tokenize(Path("runs") / "beauty-coba" / "sids")
    if not (path / "model.safetensors").exists():
        rows = [r for r in read_json(RESULTS / "retrieval_beauty.json") if r.get("variant") == path.name]
        if not rows or not (path / "last.pt").exists():
            raise FileNotFoundError(f"{path}: no trained retriever (run benchmarks/retrieval_beauty.py first)")
        cfg = from_dict(RetrieverConfig, rows[0]["model_config"])
        state = torch.load(path / "last.pt", map_location="cpu", weights_only=False)
        clusters = None
        if cfg.thinking:
            from thinkrec.retrieval.clusters import code_clusters

            clusters = code_clusters(sids.quantizer.codebooks(), sids.sidmap.radix, cfg.n_clusters)
        model = GenerativeRetriever(torch.from_numpy(sids.sidmap.codes), sids.sidmap.radix, cfg, clusters)
        model.load_state_dict(state["best_state"])
        save_retriever(model, path)
    return GenerativeScorer(load_retriever(path), sids.sidmap, beam, dense_weight)


def build_sets(name: str, args: argparse.Namespace, cfg: RerankStageConfig):
    """-> (train, valid, test, click model or None)."""
    if name in ("synthetic", "synthetic-randomlog"):
        # synthetic-randomlog: the same users, candidates and click model, but each list is displayed (and its clicks
        # logged) in a uniformly random order — logged clicks are then free of the logger's order on average, the
        # condition under which logged-click metrics are an unbiased test (Open Bandit's "random" policy).
        noise = 1e4 if name == "synthetic-randomlog" else 1.0
        ds = generate(SyntheticConfig(n_impressions=args.synthetic_impressions, logging_noise=noise, seed=0))
        tr, va, te = impression_sets(ds, cfg)
        return tr, va, te, ClickModel.from_dataset(ds)
    if name == "mind":
        ds = load_dataset("mind", args.data_root)
        tr, va, te = impression_sets(ds, cfg)
        return tr, va, te, None
    if name == "beauty-funnel":
        beam = max(args.retriever_beam, cfg.k)
        suffix = "" if (beam, args.retriever_rescore) == (max(20, cfg.k), 0.0) else f"-b{beam}-w{args.retriever_rescore:g}"
        cache = Path(args.out) / name / f"lists-k{cfg.k}-{Path(args.retriever).name}{suffix}"
        if (cache / "test" / "lists.safetensors").exists():
            return (*(RerankLists.load(cache / p) for p in ("train", "valid", "test")), None)
        from thinkrec.tokenize.embed import EmbedConfig, embed_items

        ds = load_dataset("beauty", args.data_root)
        split = leave_one_out(ds)
        scorer = _retriever_scorer(Path(args.retriever), beam, args.retriever_rescore)
        t = time.perf_counter()
        tr, va, te = funnel_sets(split, scorer_top_k(scorer, cfg.k), item_categories(ds), cfg,
                                 item_vectors=embed_items(ds, EmbedConfig()))
        print(f"funnel candidates: {time.perf_counter() - t:.0f}s, retriever R@{cfg.k} on test {te.meta['recall_at_k']:.4f}")
        for part, lists in (("train", tr), ("valid", va), ("test", te)):
            lists.save(cache / part)
        return tr, va, te, None
    raise ValueError(f"unknown dataset {name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="synthetic,mind,beauty-funnel")
    p.add_argument("--models", default=",".join(RERANK_MODELS))
    p.add_argument("--ablations", nargs="?", const="all", default="",
                   help="EGLR ablations: all (S_max 0/1, fixed temperature, always-reason, residual reasoning) or a "
                        "comma-separated subset of their names")
    p.add_argument("--data-root", default=None)
    p.add_argument("--retriever", default="runs/bench-retrieval/beauty/tiger")
    p.add_argument("--retriever-beam", type=int, default=20, help="beam size of the funnel retriever (≥ k)")
    p.add_argument("--retriever-rescore", type=float, default=0.0,
                   help="the funnel retriever's dense re-scoring weight (GenerativeScorer.dense_weight)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--synthetic-impressions", type=int, default=20000)
    p.add_argument("--set", action="append", default=[], help="model.KEY=V or train.KEY=V overrides")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="suffix for the variant names (keeps other rows of the results file)")
    p.add_argument("--out", default="runs/bench-rerank")
    p.add_argument("--seeds", default="0", help="training seeds (comma-separated); rows report the seeds' means")
    args = p.parse_args()
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    torch.set_num_threads(args.threads)
    mcfg, tcfg = RerankModelConfig(), RerankTrainConfig()
    for kv in args.set:
        key, v = kv.split("=", 1)
        part, field_name = key.split(".", 1)
        obj = mcfg if part == "model" else tcfg
        cur = getattr(obj, field_name)
        if isinstance(cur, bool):
            val = v.lower() in ("1", "true", "yes")
        elif cur is None:
            val = int(v) if v.lstrip("-").isdigit() else float(v)
        else:
            val = type(cur)(v)
        if part == "model":
            mcfg = replace(mcfg, **{field_name: val})
        else:
            tcfg = replace(tcfg, **{field_name: val})
    cfg = RerankStageConfig(k=args.k, model=mcfg, train=tcfg)
    rows = []
    for dname in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        t_data = time.perf_counter()
        tr, va, te, click_model = build_sets(dname, args, cfg)
        print(f"{dname}: {len(tr)} train / {len(va)} valid / {len(te)} test lists of {te.list_len} "
              f"({time.perf_counter() - t_data:.0f}s)", flush=True)
        t = time.perf_counter()
        evaluator, ev_hist = train_evaluator(tr, va, mcfg, tcfg, log=print)
        ev_s = time.perf_counter() - t
        runs = [(m, m, mcfg) for m in args.models.split(",") if m]
        if args.ablations:
            names = list(ABLATIONS) if args.ablations == "all" else [a.strip() for a in args.ablations.split(",")]
            unknown = [a for a in names if a not in ABLATIONS]
            if unknown:
                raise SystemExit(f"--ablations: unknown {unknown}; choose from {', '.join(ABLATIONS)}")
            runs += [(label, ABLATIONS[label][0], replace(mcfg, **ABLATIONS[label][1])) for label in names]
        runs = [(label + args.tag, base, c) for label, base, c in runs]
        per_list, profiles = {}, {}
        references = {}
        if click_model is not None:  # orders that know the true click model: what do logged clicks say of them?
            for ref, orders in reference_orders(te, click_model).items():
                per = evaluate_orders(te, orders, evaluator, reward_kind(tcfg, tr), click_model)
                references[ref] = {k: round(float(v.mean()), 5) for k, v in per.items()}
                print(f"{dname} reference order {ref}: {references[ref]}", flush=True)
        for label, base, model_cfg in runs:
            t = time.perf_counter()
            # one fit per training seed; with several, metrics and per-list values are the seeds' means (paired tests
            # then compare seed-averaged lists, so training noise is not mistaken for a difference between models)
            fits = [fit_and_score(base, tr, va, te, model_cfg, replace(tcfg, seed=s), evaluator, click_model, log=print,
                                  label=label if len(seeds) == 1 else f"{label}@seed{s}") for s in seeds]
            wall = time.perf_counter() - t
            fit = fits[0]
            per_list[label] = {k: np.mean([f.per_list[k] for f in fits], 0) for k in fit.per_list}
            if fit.profile is not None and label in ("eglr", "eglr-smax0", "egrerank", "eglr-always-reason"):
                profiles[label] = fit.profile
            m = {k: round(float(np.mean([f.metrics[k] for f in fits])), 5) for k in fit.metrics}
            m["peak_rss_mb"] = round(peak_rss_mb(), 1)
            extra = {"reference_orders": references} if references and base == "initial" else {}
            if len(seeds) > 1:
                extra["seeds"] = {str(s): {k: round(v, 5) for k, v in f.metrics.items()} for s, f in zip(seeds, fits, strict=True)}
            rows.append(row("rerank", dname, base, m, wall, variant=label, model_config=asdict(model_cfg), **extra,
                            train_config=asdict(tcfg), profile=fit.profile,
                            n_lists={"train": len(tr), "valid": len(va), "test": len(te)},
                            evaluator={"train_s": round(ev_s, 1), "valid_logloss": min(h["valid_logloss"] for h in ev_hist)}))
            save_rows("rerank", rows, key="variant")
        tests = {}
        main = "eglr" + args.tag
        if main in per_list:
            for other in per_list:
                if other != main:
                    tests[f"{main}_vs_{other}"] = {
                        k: paired_test(per_list[main][k], per_list[other][k], 1000, seed=0)
                        for k in ("ndcg@5", "expected_clicks") if k in per_list[main]
                    }
                    print(main, "vs", other, tests[f"{main}_vs_{other}"], flush=True)
            for r in rows:
                if r["dataset"] == dname and r["variant"] == main:
                    r["paired_tests"] = tests
        if profiles:
            plot_profiles(profiles, RESULTS / "plots", prefix=f"rerank_{dname}")
            write_json(Path(args.out) / dname / "profiles.json", profiles)
        save_rows("rerank", rows, key="variant")


if __name__ == "__main__":
    main()
