"""A trained funnel loaded from its run directory: ``thinkrec.load(run).recommend(...)``.

The loaded funnel reads only its run directory's current generation (:mod:`thinkrec.pipeline.generations`: the
snapshot the last finished evaluation published, never the folders a running ``thinkrec run`` is rewriting): the
catalogue and histories (``data/``), each model's folder (scorers, re-rankers), the re-ranking featurizer's tables
(popularity, transitions, categories, item vectors), the re-score weights (``retrieval/<name>/rescore.json``) and
``funnel.json``, the record of which retriever and re-ranker the funnel uses and why. Every node it uses is
checked at load against the lineage of the nodes it was built on (:func:`~thinkrec.pipeline.generations.check_nodes`):
a re-ranker trained on another featurizer is refused, naming it, before any request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.data.dataset import Dataset
from thinkrec.errors import InvalidArgumentError, MissingInputError, UnknownNameError
from thinkrec.eval.metrics import mean_metrics, rank_metrics
from thinkrec.eval.protocol import compute_ranks
from thinkrec.pipeline.config import RunConfig, load_run_config, resolve
from thinkrec.pipeline.generations import StaleNodeError, check_nodes, current
from thinkrec.pipeline.scorers import SCORERS
from thinkrec.utils.io import read_json
from thinkrec.utils.selection import select_best


# ---------------------------------------------------------------------------------------------- the record
def _valid_ndcg(root: Path, name: str) -> float | None:
    path = root / SCORERS.get(name).folder(name) / "train_metrics.json"
    return float(read_json(path)["best_valid_ndcg@10"]) if path.exists() else None


def choose_funnel(root: str | Path, config: RunConfig) -> dict[str, Any]:
    """Which retriever and re-ranker the funnel uses, with the validation figures that decided it.

    Retriever: the re-ranking lists' candidate generator when the re-rankers were trained on funnel lists, else
    the scorer with the best validation N@10. Re-ranker: only on funnel lists (impression-trained re-rankers
    re-order logged slates, :meth:`Funnel.rerank`), the one with the best validation N@5, ``initial`` included, so
    a re-ranker that does not beat its input on validation is not used. LLM: the phase the LLM stage chose on its
    validation lists (``deploy``: only one that beat the pre-rank order there), else None."""
    root = Path(root)
    out: dict[str, Any] = {}
    info_file = root / "rerank" / "lists" / "info.json"
    lists_info = read_json(info_file) if info_file.exists() else {}
    trained = [n for n in SCORERS if (root / SCORERS.get(n).folder(n) / "config.json").exists()]
    valid = {n: v for n in trained if (v := _valid_ndcg(root, n)) is not None}
    if lists_info.get("source") == "funnel":
        out["retriever"] = lists_info["candidates"]
        out["retriever_why"] = f"the re-rankers were trained on {lists_info['candidates']}'s top-{config.rerank.k} lists"
    elif valid:
        out["retriever"] = max(valid, key=valid.get)
        out["retriever_why"] = "best validation N@10: " + ", ".join(f"{n} {v:.4f}" for n, v in valid.items())
    elif trained:
        out["retriever"], out["retriever_why"] = trained[0], "the only trained scorer"
    else:
        out["retriever"], out["retriever_why"] = None, "no trained scorer"
    metrics_file = root / "rerank" / "metrics.json"
    out["reranker"] = None
    if lists_info.get("source") == "funnel" and metrics_file.exists():
        v = {n: m["ndcg@5"] for n, m in read_json(metrics_file).get("valid", {}).items()}
        if v:
            best = select_best(v, prefer=("initial",))  # ties keep the input order
            out["reranker"] = None if best == "initial" else best
            out["reranker_why"] = "best validation N@5 (initial = the retriever's order): " + ", ".join(
                f"{n} {x:.4f}" for n, x in v.items())
    elif lists_info:
        out["reranker_why"] = (f"re-rankers were trained on {lists_info.get('source')} lists; they re-order logged "
                               "slates (Funnel.rerank), not the retriever's top-K")
    else:
        out["reranker_why"] = "no re-ranking stage in this run"
    cand_file = root / "candidates" / "info.json"
    if lists_info.get("candidates") == "merged":
        out.update(_choose_merged(lists_info, read_json(metrics_file) if metrics_file.exists() else {}))
    elif cand_file.exists() and "candidates" in config.stages:  # merged candidates, re-rankers on other lists
        cand = read_json(cand_file)
        out.update(_choose_merged({"sources": cand["sources"], "compare": cand["valid_compare"]}, {},
                                  where="every validation example; no re-ranker was trained on them"))
        out["reranker_why"] = out["final_why"] + ("; the re-rankers were trained on " + lists_info["source"] +
                                                  " lists, not on the merged candidates") if lists_info else ""
    llm_file = root / "llm" / "metrics.json"
    llm = read_json(llm_file) if llm_file.exists() else {}
    out["llm"] = llm.get("deploy")  # the LLM phase whose order beat its input on validation lists, or None
    out["llm_why"] = (llm.get("deploy_why") or "not used: this LLM run answered no validation lists, and the funnel "
                      "uses a stage only where it beat its input on validation") if llm else "not trained"
    out["validation"] = valid
    return out


def _choose_merged(lists_info: dict[str, Any], rerank_metrics: dict[str, Any], metric: str = "ndcg@10",
                   where: str = "validation lists held out from training and early stopping") -> dict[str, Any]:
    """The final list over merged candidates, chosen on the comparison slice (validation lists that neither
    trained nor early-stopped any re-ranker): each source alone, the merge order, each re-ranker. Ties go to the
    simpler configuration. ``lost``: every stage that did worse than its input there."""
    cmp = lists_info["compare"]
    sources = list(lists_info["sources"])
    options: dict[str, float] = {s: cmp[s][metric] for s in sources if s in cmp}
    options["candidates"] = cmp["candidates"][metric]
    for name, v in rerank_metrics.get("valid", {}).items():
        if name != "initial" and metric in v:
            options[name] = v[metric]
    order = list(options)
    final = select_best(options)
    best_source = max(sources, key=lambda n: options.get(n, -1.0))
    lost = []
    if options["candidates"] < options[best_source]:
        lost.append(f"candidates: the merge order's {metric} {options['candidates']:.4f} < {best_source} alone "
                    f"{options[best_source]:.4f} on the comparison slice")
    for name in order[len(sources) + 1:]:
        if options[name] < options["candidates"]:
            lost.append(f"rerank/{name}: {metric} {options[name]:.4f} < its input (the merge order) "
                        f"{options['candidates']:.4f} on the comparison slice")
    out: dict[str, Any] = {"sources": sources, "final": final, "comparison": options, "lost": lost,
                           "final_why": f"best {metric} on the comparison slice ({where}): " + ", ".join(f"{n} {v:.4f}" for n, v in options.items())}
    if final in sources:
        out.update(retriever=final, reranker=None)
    else:
        out.update(retriever="merged", reranker=None if final == "candidates" else final)
    out["retriever_why"] = (f"merged candidates of {', '.join(sources)}" if final not in sources
                            else f"{final} alone beat the merged / re-ranked lists on the comparison slice")
    out["reranker_why"] = out["final_why"]
    return out


# ---------------------------------------------------------------------------------------------- results
@dataclass
class RecommendedItem:
    item: int  # dense index
    item_id: str  # the dataset's own id
    title: str
    score: float  # the retriever's score (beam log-probability, re-scored where configured; or model score)
    ranks: dict[str, int]  # 1-based rank at each stage (retriever, reranker)
    sid: str | None = None
    explanation: dict[str, Any] | None = None


@dataclass
class UserRecommendations:
    user_id: str | None  # None for a history given directly
    history: list[str]  # item ids the recommendation was computed after (oldest first)
    items: list[RecommendedItem]
    stages: dict[str, str | None]  # {"retriever": name, "reranker": name or None}
    explanation: dict[str, Any] | None = None  # per request: thinking agreement, EGLR reasoning per position
    cold_start: bool = False  # empty history: served from popularity


@dataclass
class Requests:
    """Resolved requests (:meth:`Funnel.requests`): dense user indices (−1 for a given history) and dense-id
    histories; requests of different origins concatenate into one batch (:meth:`concat`)."""

    users: np.ndarray  # dense user index, −1 for given histories
    histories: list[np.ndarray]  # dense item ids, oldest first

    def __len__(self) -> int:
        return len(self.histories)

    @staticmethod
    def concat(parts: list[Requests]) -> Requests:
        return Requests(np.concatenate([p.users for p in parts]) if parts else np.zeros(0, np.int64),
                        [h for p in parts for h in p.histories])


def funnel_nodes(record: dict[str, Any], scorer_trained: Any = None) -> dict[str, str | None]:
    """The graph nodes (→ home folders) the funnel of ``record`` (``funnel.json``) serves from: the data, every
    scorer it retrieves with (merged: each source; plus popularity for cold starts where trained), the re-score
    weights of a generative one, the re-ranker and its featurizer, the LLM adapter."""
    nodes: dict[str, str | None] = {"data": "data"}
    retriever = record.get("retriever")
    scorers = list(record.get("sources") or []) if retriever == "merged" else ([retriever] if retriever else [])
    if scorer_trained is None or scorer_trained("popularity"):
        scorers.append("popularity")
    for name in dict.fromkeys(scorers):
        spec = SCORERS.get(name)
        nodes[spec.folder(name)] = spec.folder(name)
        if spec.generative:
            nodes[f"{spec.folder(name)}/rescore"] = None
    if record.get("reranker"):
        nodes[f"rerank/{record['reranker']}"] = f"rerank/{record['reranker']}"
        nodes["rerank/lists"] = "rerank/featurizer"
    if record.get("llm"):
        nodes["llm"] = "llm"
    return nodes


class Funnel:
    """The trained funnel of one run directory (see :func:`load`)."""

    def __init__(self, run_dir: str | Path, device: str | None = None):
        self.run_root = Path(run_dir)
        generation = current(self.run_root)
        # the published generation; a run directory that never finished an evaluation is read as it is (checked)
        self.root = generation or self.run_root
        self.generation = generation.name if generation is not None else None
        if not (self.root / "config.yaml").exists():
            raise MissingInputError(f"{self.root}: not a run directory (no config.yaml)")
        cfg = load_run_config(self.root / "config.yaml")
        if device is not None:
            cfg.run.device = device
        self.config = resolve(cfg)
        self.device = self.config.run.device
        if not (self.root / "funnel.json").exists():
            raise StaleNodeError(self.run_root, "funnel.json", "is missing: no evaluation has finished in this run "
                                 "directory, so there is no measured funnel to serve", "evaluate")
        self.record = read_json(self.root / "funnel.json")
        # before anything loads: every node served is complete, built on the others, and the one the evaluation
        # measured (one line naming the node, else)
        check_nodes(self.root, funnel_nodes(self.record, lambda n: (self.root / SCORERS.get(n).folder(n)).is_dir()),
                    self.run_root, self.record.get("built_on"))
        self.dataset = Dataset.load(self.root / "data")
        self._split = None
        self._scorers: dict[str, Any] = {}
        self._rerankers: dict[str, Any] = {}
        self._featurizer = None
        self._explainers: dict[str, Any] = {}
        offsets, seq = self.dataset.sequences()
        self._offsets, self._seq = offsets, seq
        self._user_ids = self.dataset.users.sort("user")["user_id"].to_list()
        self._user_index = {u: i for i, u in enumerate(self._user_ids)}
        self._example_index: dict[str, dict[int, int]] = {}
        items = self.dataset.items.sort("item")
        self._item_ids = items["item_id"].to_list()
        self._item_index = {v: i for i, v in enumerate(self._item_ids)}
        self._titles = items["title"].to_list() if "title" in items.columns else [None] * len(self._item_ids)

    # -- components, each loaded from its own folder on first use
    @property
    def split(self) -> Any:
        if self._split is None:
            from thinkrec.pipeline.split import split_of

            self._split = split_of(self.dataset, self.config)
        return self._split

    @property
    def seen(self) -> dict[str, Any]:
        """The run's seen-item policy as its evaluation resolved it (``funnel.json``; :mod:`thinkrec.data.seen`)."""
        if "seen" not in self.record:
            from thinkrec.data.seen import resolve_seen

            ev, split = self.config.eval, self.split
            self.record["seen"] = resolve_seen(ev.seen, ev.seen_threshold, split.train_offsets,
                                               split.train_items).to_dict()
        return self.record["seen"]

    @property
    def models(self) -> dict[str, list[str]]:
        """Trained models in this run, by family: those complete and consistent with the nodes they were built on."""
        scorers = [n for n in SCORERS if (self.root / SCORERS.get(n).folder(n) / "config.json").exists()
                   and self._consistent(self._scorer_nodes(n))]
        rerank = self.root / "rerank"
        rerankers = sorted(p.name for p in rerank.iterdir() if (p / "config.json").exists() and p.name != "evaluator"
                           and self._consistent(self._reranker_nodes(p.name))) if rerank.exists() else []
        return {"scorers": scorers, "rerankers": rerankers}

    @staticmethod
    def _scorer_nodes(name: str) -> dict[str, str | None]:
        spec = SCORERS.get(name)
        folder = spec.folder(name)
        return {folder: folder, **({f"{folder}/rescore": None} if spec.generative else {})}

    @staticmethod
    def _reranker_nodes(name: str) -> dict[str, str | None]:
        return {f"rerank/{name}": f"rerank/{name}", "rerank/lists": "rerank/featurizer"}

    def _consistent(self, nodes: dict[str, str | None]) -> bool:
        try:
            check_nodes(self.root, nodes, self.run_root)
        except StaleNodeError:
            return False
        return True

    def scorer(self, name: str) -> Any:
        if name not in self._scorers:
            spec = SCORERS.get(name)
            folder = self.root / spec.folder(name)
            if not (folder / "config.json").exists():
                raise InvalidArgumentError(f"{folder}: no trained {name} in this run (trained: {', '.join(self.models['scorers'])})")
            check_nodes(self.root, self._scorer_nodes(name), self.run_root)
            self._scorers[name] = spec.load(folder, self.device)
        return self._scorers[name]

    def reranker(self, name: str) -> Any:
        from thinkrec.rerank.stage import load_reranker

        if name not in self._rerankers:
            folder = self.root / "rerank" / name
            if not (folder / "config.json").exists():
                raise InvalidArgumentError(f"{folder}: no trained re-ranker {name!r} (trained: {', '.join(self.models['rerankers'])})")
            check_nodes(self.root, self._reranker_nodes(name), self.run_root)
            self._rerankers[name] = load_reranker(folder, self.device)[1]
        return self._rerankers[name]

    @property
    def featurizer(self) -> Any:
        from thinkrec.rerank.lists import ListFeaturizer

        if self._featurizer is None:
            self._featurizer = ListFeaturizer.load(self.root / "rerank" / "featurizer")
        return self._featurizer

    # -- ids
    def user_index(self, user: str | int) -> int:
        key = str(user)
        if key not in self._user_index:
            raise UnknownNameError(f"unknown user {user!r} in {self.root / 'data'} ({len(self._user_index)} users)")
        return self._user_index[key]

    def item_indices(self, item_ids: list[str | int]) -> np.ndarray:
        unknown = [i for i in item_ids if str(i) not in self._item_index]
        if unknown:
            raise UnknownNameError(f"unknown item id(s) {unknown[:20]} in {self.root / 'data'}")
        return np.array([self._item_index[str(i)] for i in item_ids], dtype=np.int64)

    def history_of(self, user: int, as_of: str | None = None) -> np.ndarray:
        """A user's history: the whole known sequence, or (``as_of="test"`` / ``"valid"``) the one evaluation saw."""
        if as_of is None:
            return self._seq[self._offsets[user]: self._offsets[user + 1]]
        if as_of not in ("test", "valid"):
            raise InvalidArgumentError(f"as_of must be None, 'test' or 'valid', got {as_of!r}")
        ex = getattr(self.split, as_of)
        index = self._example_index.setdefault(as_of, {int(u): i for i, u in enumerate(ex.users)})
        if user not in index:
            raise UnknownNameError(f"user {self._user_ids[user]!r} has no {as_of} example")
        return ex.history(index[user])

    # -- the funnel
    def recommend(self, users: list[str | int] | None = None, histories: list[list[str | int]] | None = None,
                  k: int = 10, explain: bool = False, exclude_seen: bool | None = None, as_of: str | None = None,
                  retriever: str | None = None, reranker: str | None | bool = True, batch_size: int = 256,
                  requests: Requests | None = None, timings: dict[str, float] | None = None,
                  ) -> list[UserRecommendations]:
        """Recommend ``k`` items per user (candidate generation → re-ranking), in batches.

        - ``users``: original user ids; each uses the user's whole known history, unless ``as_of="test"`` (the
          history before the test target, as evaluation sees it) or ``"valid"``. ``histories``: lists of
          original item ids instead (oldest first). Exactly one of the two.
        - ``exclude_seen`` (default: the run's seen-item policy, :attr:`seen`, the one its evaluation used) drops
          items of the history (a generative retriever returns at most its beam, so fewer than ``k`` items can
          remain).
        - ``retriever`` / ``reranker``: override ``funnel.json``'s choice; ``reranker=None`` (or ``False``) skips
          re-ranking, ``True`` uses the recorded one (which may be none).
        - ``explain``: S²GR's thinking tokens per item (nearest cluster, its categories, agreement with the next
          code) and, for pointer re-rankers, EGLR's entropy and reasoning steps per position.
        - ``requests``: already resolved requests (:meth:`requests`) instead of ``users`` / ``histories``;
          ``timings``: seconds spent per stage are added to this dict (``retrieval``, ``rerank``, ``explain``).

        Results are equal (same item ids in the same order, scores within 1e-6) whatever the batch size or batch
        composition; with ``as_of="test"`` and no re-ranker, the retriever's lists are the ones the pipeline's
        evaluation ranked (``evaluate`` reproduces its metrics).
        """
        batch = requests if requests is not None else self.requests(users, histories, as_of)
        exclude_seen = self.seen["exclude"] if exclude_seen is None else bool(exclude_seen)
        retriever = retriever or self.record.get("retriever")
        if retriever is None:
            raise InvalidArgumentError(f"{self.root}: no trained retriever")
        if reranker is True:
            reranker = self.record.get("reranker")
        reranker = reranker or None
        if k < 1:
            raise InvalidArgumentError(f"k must be ≥ 1, got {k}")
        n_cand = max(k, self.config.rerank.k) if reranker else k
        timings = {} if timings is None else timings
        out: list[UserRecommendations] = []
        for lo in range(0, len(batch.histories), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(batch.histories)))
            out += self._recommend_batch(batch, rows, k, n_cand, explain, exclude_seen, retriever, reranker, timings)
        return out

    def requests(self, users: list | None = None, histories: list | None = None, as_of: str | None = None) -> Requests:
        """Resolve original user ids (their history, see :meth:`recommend`) or original-id histories; raises
        ``KeyError`` naming unknown users / items."""
        if (users is None) == (histories is None):
            raise InvalidArgumentError("give exactly one of users= or histories=")
        if users is not None:
            idx = np.array([self.user_index(u) for u in users], dtype=np.int64)
            return Requests(idx, [self.history_of(int(u), as_of) for u in idx])
        if as_of is not None:
            raise InvalidArgumentError("as_of applies to users=, not to histories=")
        return Requests(np.full(len(histories), -1, np.int64), [self.item_indices(list(h)) for h in histories])

    @property
    def item_ids(self) -> list[str]:
        """Original item ids by dense index."""
        return self._item_ids

    @property
    def user_ids(self) -> list[str]:
        """Original user ids by dense index."""
        return self._user_ids

    def title(self, item: int) -> str:
        return self._titles[item] or ""

    def max_k(self, retriever: str | None = None) -> int:
        """The longest list the funnel can return: the merged set, or a generative retriever's beam, or the catalogue."""
        retriever = retriever or self.record.get("retriever")
        if retriever == "merged":
            return int(self.config.candidates.k)
        if retriever is not None and SCORERS.get(retriever).generative:
            return max(int(self.scorer(retriever).beam_size), int(self.config.rerank.k))
        return len(self._item_ids)

    def _candidates(self, name: str, histories: list[np.ndarray], n: int, exclude_seen: bool, want_thoughts: bool
                    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Top-``n`` items [B, n] (−1 where fewer) and scores of scorer ``name`` for the histories: the candidate
        stage's own function (:func:`~thinkrec.retrieval.candidates.source_top_k`), the evaluation window of every
        scorer (models cut longer inputs to their own window)."""
        from thinkrec.retrieval.candidates import source_top_k

        return source_top_k(self.scorer(name), histories, n, self.config.sasrec.max_len, exclude_seen, self.device,
                            return_thoughts=want_thoughts)

    def merged_candidates(self, histories: list[np.ndarray], exclude_seen: bool = False) -> Any:
        """The merged candidate set (:class:`~thinkrec.retrieval.candidates.CandidateSet`) of the run's sources for
        dense-id histories, by the candidate stage's rule and sizes."""
        from thinkrec.retrieval.candidates import merge_candidates

        c = self.config.candidates
        sources = self.record.get("sources") or read_json(self.root / "candidates" / "info.json")["sources"]
        per = {}
        for name in sources:
            per[name] = self._candidates(name, histories, c.per_source or c.k, exclude_seen, False)[:2]
        return merge_candidates(per, c.k, c.quotas_for(list(sources)))

    def _recommend_batch(self, batch: Requests, rows: np.ndarray, k: int, n_cand: int, explain: bool,
                         exclude_seen: bool, retriever: str, reranker: str | None,
                         timings: dict[str, float]) -> list[UserRecommendations]:
        hist = [batch.histories[i] for i in rows]
        cold = np.array([len(h) == 0 for h in hist])
        merged, rec = None, None
        t0 = time.perf_counter()
        if retriever == "merged":
            merged = self.merged_candidates(hist, exclude_seen)
            # the score shown for a merged candidate: reciprocal-rank fusion over the sources that returned it
            items = merged.items.copy()
            scores = np.where(merged.ranks >= 0, 1.0 / (1.0 + np.maximum(merged.ranks, 0)), 0.0).sum(-1).astype(np.float32)
        else:
            items, scores, rec = self._candidates(retriever, hist, n_cand, exclude_seen, explain)
        if cold.any():  # no history to condition on: the documented fallback is popularity
            pop_items, pop_scores, _ = self._candidates("popularity", [h for h, c in zip(hist, cold, strict=True) if c],
                                                        items.shape[1], False, False) if "popularity" in self.models["scorers"] \
                else (np.full((int(cold.sum()), items.shape[1]), -1), np.zeros((int(cold.sum()), items.shape[1]), np.float32), None)
            items[cold], scores[cold] = pop_items, pop_scores
        t1 = time.perf_counter()
        timings["retrieval"] = timings.get("retrieval", 0.0) + t1 - t0
        order = np.tile(np.arange(items.shape[1]), (len(rows), 1))
        traces = None
        if reranker is not None:
            order, traces = self._rerank_orders(reranker, batch.users[rows], hist, items, scores, explain, merged)
            order[cold] = np.arange(items.shape[1])  # cold requests keep the popularity order
        t2 = time.perf_counter()
        timings["rerank"] = timings.get("rerank", 0.0) + t2 - t1
        thoughts, agreement = (None, None)
        if explain and rec is not None and rec.beams.thoughts is not None:
            thoughts, agreement = self._explainer(retriever).explain(rec)
        sidmap = getattr(self.scorer(retriever), "sidmap", None) if retriever != "merged" else None
        out = []
        for b, i in enumerate(rows):
            picked = []
            for pos, j in enumerate(order[b]):
                it = int(items[b, j])
                if it < 0:
                    continue
                if merged is not None and not cold[b]:
                    ranks = {"candidates": int(j) + 1, **{f"source:{s}": int(merged.ranks[b, j, si]) + 1
                                                           for si, s in enumerate(merged.sources) if merged.ranks[b, j, si] >= 0}}
                else:
                    ranks = {"retriever": int(j) + 1}
                if reranker is not None and not cold[b]:
                    ranks["reranker"] = pos + 1
                expl = None
                if thoughts is not None and not cold[b]:
                    expl = {"thinking": thoughts[b][j]}
                picked.append(RecommendedItem(it, str(self._item_ids[it]), self._titles[it] or "", float(scores[b, j]),
                                              ranks, sidmap.sid_strings(np.array([it]), wrap=False)[0] if sidmap else None,
                                              expl))
                if len(picked) == k:
                    break
            req_expl = None
            if explain:
                req_expl = {"thinking_agreement": agreement} if agreement is not None else {}
                if traces is not None:
                    req_expl["reranker_reasoning"] = traces[b]
            user_id = str(self._user_ids[int(batch.users[i])]) if batch.users[i] >= 0 else None
            stages = {"retriever": "popularity" if cold[b] else retriever, "reranker": None if cold[b] else reranker}
            if merged is not None and not cold[b]:
                stages["sources"] = ",".join(merged.sources)
            out.append(UserRecommendations(user_id, [str(self._item_ids[h]) for h in hist[b]], picked, stages,
                                           req_expl, bool(cold[b])))
        timings["explain"] = timings.get("explain", 0.0) + time.perf_counter() - t2
        return out

    def _explainer(self, retriever: str) -> Any:
        from thinkrec.retrieval.explain import ThoughtExplainer, coarse_labels

        if retriever not in self._explainers:  # cluster descriptions are fixed per model: build once
            categories = self.dataset.items.sort("item")["categories"].to_list() \
                if "categories" in self.dataset.items.columns else [None] * len(self._item_ids)
            self._explainers[retriever] = ThoughtExplainer(self.scorer(retriever).model,
                                                           self.scorer(retriever).sidmap.codes, coarse_labels(categories))
        return self._explainers[retriever]

    def _rerank_orders(self, name: str, users: np.ndarray, histories: list[np.ndarray], items: np.ndarray,
                       scores: np.ndarray, explain: bool, merged: Any = None) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
        from thinkrec.rerank.models import PointerGenerator
        from thinkrec.rerank.train import rerank_orders

        model = self.reranker(name)
        if merged is not None:  # merged candidates: every source's rank and score are features, no single score
            lists = self.featurizer.lists(users, histories, items, None, None, self.config.rerank.history_len, "funnel",
                                          source_ranks=merged.ranks, source_scores=merged.scores)
        else:
            lists = self.featurizer.lists(users, histories, items, None, np.where(items >= 0, scores, 0.0),
                                          self.config.rerank.history_len, "funnel")
        if not (explain and isinstance(model, PointerGenerator)):
            return rerank_orders(model, lists, device=self.device), None
        order, traces = rerank_orders(model, lists, device=self.device, return_traces=True)
        per = []
        for tr in traces:
            for b in range(tr.actions.shape[0]):
                per.append({"entropy": tr.entropy_first[b].tolist(), "entropy_after": tr.entropy_final[b].tolist(),
                            "reasoning_steps": tr.steps[b].tolist(), "temperature": tr.temp_select[b].tolist()})
        return order, per

    def rerank(self, name: str, lists: Any) -> np.ndarray:
        """Orders ``[n, L]`` of re-ranker ``name`` over :class:`RerankLists` (e.g. logged slates)."""
        from thinkrec.rerank.train import rerank_orders

        return rerank_orders(self.reranker(name), lists, device=self.device)

    # -- evaluation through the loaded artifacts
    def evaluate(self, model: str, part: str = "test") -> dict[str, float]:
        """Metrics of one trained model recomputed from the loaded folders: a scorer by the pipeline's full-ranking
        protocol, a re-ranker on the run's re-ranking lists rebuilt from the data and the featurizer."""
        if model in SCORERS:
            ev = self.config.eval
            examples = getattr(self.split, part)
            ranks = compute_ranks(self.scorer(model).score, examples, self.config.sasrec.max_len, ev.batch_size,
                                  self.seen["exclude"], self.device)
            return mean_metrics(rank_metrics(ranks, ev.ks))
        from thinkrec.rerank.train import order_metrics

        lists = self.rebuild_lists(part)
        per = order_metrics(lists, self.rerank(model, lists))
        return {k: float(np.mean(v)) for k, v in per.items()}

    def verify(self, n_users: int = 200, seed: int = 0) -> dict[str, Any]:
        """Serve the final list to ``n_users`` test users (seeded; their histories as evaluation saw them) and
        compare each one's N@10 with the per-user figure this generation's evaluation recorded
        (``eval/per_user.parquet``): ``{"users", "mismatches", "max_abs_diff"}``. A deployment smoke test."""
        import polars as pl

        path = self.root / "eval" / "per_user.parquet"
        column = "funnel/ndcg@10"
        frame = pl.read_parquet(path) if path.exists() else None
        if frame is None or column not in frame.columns:
            raise MissingInputError(f"{path}: no per-user N@10 of the final list (run the evaluate stage)")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(frame.height, min(n_users, frame.height), replace=False))
        users = [self._user_ids[int(u)] for u in frame["user"].to_numpy()[rows]]
        targets = self.split.test.targets[rows]
        served = np.zeros(len(rows))
        for i, rec in enumerate(self.recommend(users=users, as_of="test", k=10)):
            hit = [j for j, it in enumerate(rec.items) if it.item == int(targets[i])]
            served[i] = 1.0 / np.log2(hit[0] + 2) if hit else 0.0
        diff = np.abs(served - frame[column].to_numpy()[rows])
        return {"users": len(rows), "mismatches": int((diff > 1e-9).sum()), "max_abs_diff": float(diff.max(initial=0.0))}

    def rebuild_lists(self, part: str = "test") -> Any:
        """The re-ranking stage's lists of ``part`` rebuilt from the run's data, retriever and featurizer."""
        from thinkrec.rerank.lists import funnel_lists, impression_requests, temporal_thirds

        info = read_json(self.root / "rerank" / "lists" / "info.json")
        cfg = self.config.rerank
        if info["source"] == "impressions":
            req = impression_requests(self.dataset, cfg.max_len)
            lists = self.featurizer.lists(req.users, req.histories, req.items, req.labels, None, cfg.history_len,
                                          "impressions", req.meta)
            train, valid, test = temporal_thirds(lists, cfg.holdout_frac, 0.1)
            return {"train": train, "valid": valid, "test": test}[part]
        if part != "test":
            raise ValueError("funnel training lists are a seeded hold-out of validation examples; rebuild only 'test'")
        from thinkrec.retrieval.candidates import scorer_top_k

        examples = self.split.test
        if info["candidates"] == "merged":
            cand = self.merged_candidates([examples.history(i) for i in range(len(examples))], self.seen["exclude"])
            return funnel_lists(examples, cand.items, None, self.split, self.featurizer.category, cfg.history_len,
                                featurizer=self.featurizer, source_ranks=cand.ranks, source_scores=cand.scores)
        items, scores = scorer_top_k(self.scorer(info["candidates"]), cfg.k, self.config.sasrec.max_len,
                                     exclude_seen=self.seen["exclude"], device=self.device)(examples)
        return funnel_lists(examples, items, scores, self.split, self.featurizer.category, cfg.history_len,
                            featurizer=self.featurizer)


def load(run_dir: str | Path, device: str | None = None) -> Funnel:
    """Load the trained funnel of a run directory (nothing else is read)."""
    return Funnel(run_dir, device)
