"""Stage 4 end to end: SID tokens → alignment → teacher traces → SFT (target and/or reject sampling) → DAPO →
evaluation, saving everything under ``<run>/llm/``.

Evaluation generates one greedy, constrained answer per list and scores the true item's rank: R@1, R@5, N@5
(:mod:`thinkrec.eval.metrics`, from its 1-based position in the answer). Only
lists whose candidates contain the true item can score, so generation runs on those (``n_eval`` of them) and the
figures are reported both on them and scaled to every test list (× the retriever's coverage).

Under ``accelerate launch --num_processes N`` / ``torchrun`` every process runs the stage on its own device
(``cuda:LOCAL_RANK``): training is data-parallel, trace sampling and evaluation are sharded over the ranks (contiguous
slices, gathered back in order), and rank 0 alone logs and writes the traces, phase records, adapter and metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thinkrec.eval.metrics import mean_metrics, rank_metrics, ranks_from_positions
from thinkrec.llm import parallel
from thinkrec.llm.answer import AnswerTokens, max_answer_tokens
from thinkrec.llm.model import (
    LoraSettings,
    add_sid_tokens,
    apply_lora,
    load_causal_lm,
    save_adapter,
    trainable_parameters,
)
from thinkrec.llm.prompts import Catalogue, alignment_examples, rerank_prompt
from thinkrec.llm.rewards import parse_output
from thinkrec.llm.teacher import TEACHERS, RerankRequest, Teacher, requests_from_lists, sample_traces
from thinkrec.llm.train import (
    DAPOSettings,
    SFTSettings,
    alignment_features,
    sft_features,
    train_dapo,
    train_lm,
)
from thinkrec.rerank.lists import RerankLists
from thinkrec.utils import progress
from thinkrec.utils.checkpoint import Checkpointer, subdir
from thinkrec.utils.config import config_hash, device_error, non_empty, spec
from thinkrec.utils.io import read_json, write_json
from thinkrec.utils.selection import select_best

SAMPLING_MODES = ("target", "reject")


@dataclass
class TeacherSettings:
    kind: str = spec("programmatic", choices=TEACHERS.names)  # programmatic | openai | hf
    base_url: str = "http://127.0.0.1:8000/v1"  # openai
    model: str = ""  # openai: served model name; hf: model path
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = spec(1.0, ge=0.0)
    max_tries: int = spec(4, ge=1)
    # programmatic: traces are minimal edits of the input order (the top pick promoted, the rest in pre-rank order),
    # so what the student must learn is the one move, not the teacher's whole ranking
    keep_order: bool = False

    def _checks(self) -> list[tuple[str, str]]:
        if self.kind in ("openai", "hf") and not self.model.strip():
            what = "the served model's name" if self.kind == "openai" else "the path (or hub id) of the teacher model"
            return [("model", f"the {self.kind} teacher needs {what}")]
        return []


@dataclass
class LLMStageConfig:
    model: str = spec("gemma3-270m", check=non_empty)  # any HF causal-LM path, or the packaged Gemma 3 270M
    device: str = spec("cpu", check=device_error)
    dtype: str = spec("float32", choices=("float32", "bfloat16", "float16"))  # bfloat16 on GPUs
    seed: int = 0
    n_history: int = spec(5, ge=1)
    max_candidates: int = spec(10, ge=2)  # the first K of each list's pre-rank order are re-ranked (GR2: K = 10)
    # the pre-rank order the LLM re-orders: "funnel" = the re-ranker the funnel chose on validation (its final list;
    # the lists' own order if none beat it), "initial" = the lists' own order, or a re-ranker of rerank.models
    pre_rank: str = spec("funnel", check=non_empty)
    with_titles: bool = True
    title_words: int = spec(8, ge=1)  # words of each item's title in prompts (fewer: shorter prompts, more steps)
    # candidates numbered with their pre-rank and the prompt says so (keeping the order is the easy answer)
    prompt_ranks: bool = True
    max_reasoning_tokens: int = spec(48, ge=1)
    lora: LoraSettings = field(default_factory=LoraSettings)
    alignment: SFTSettings = field(default_factory=lambda: SFTSettings(steps=60, lr=5e-4, max_len=128))
    alignment_plain_text_share: float = spec(0.1, ge=0.0, le=1.0)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    sampling: list[str] = spec(default_factory=lambda: ["target", "reject"], choices=SAMPLING_MODES, min_len=1)
    # training lists (with the true item among the candidates) sent to the teacher
    n_train_requests: int = spec(200, ge=1)
    sft: SFTSettings = field(default_factory=SFTSettings)
    rl: DAPOSettings = field(default_factory=DAPOSettings)
    # which SFT model RL continues from; "best" = the one with the higher validation N@5 (the first without n_valid)
    rl_from: str = spec("target", choices=(*SAMPLING_MODES, "best"))
    n_eval: int = spec(100, ge=1)  # test lists (with the true item among the candidates) to generate for
    # test lists the alignment phase (not a final phase) is answered on: the first this many of the n_eval (0 = all)
    n_eval_alignment: int = spec(0, ge=0)
    # validation lists (with the true item) every phase is also answered on: the funnel uses the LLM's order only if
    # a phase beat its input there (0: not validated, never used)
    n_valid: int = spec(64, ge=0)
    # learning curves: every this many SFT / DAPO steps the n_valid validation lists are answered and their N@5
    # logged (``curve/ndcg@5`` in the phase logs); 0 = off
    curve_every: int = spec(0, ge=0)
    eval_batch_size: int = spec(8, ge=1)

    def _checks(self) -> list[tuple[str, str]]:
        if self.rl_from in SAMPLING_MODES and self.sampling and self.rl_from not in self.sampling:
            return [("rl_from", f"must be one of llm.sampling {self.sampling} (RL continues from that SFT model; "
                                f"got {self.rl_from!r})")]
        return []


def stage_prompt(catalogue: Catalogue, request: RerankRequest, cfg: LLMStageConfig) -> str:
    """The stage's re-ranking prompt for one request (the config's history length, titles and pre-rank numbers)."""
    return rerank_prompt(catalogue, request.history, request.candidates, cfg.n_history, cfg.with_titles,
                         ranked=cfg.prompt_ranks, title_words=cfg.title_words)


# ------------------------------------------------------------------------------------------------ evaluation
ANSWER_METRICS = ("recall@1", "recall@5", "ndcg@5")


def order_change(orders: Sequence[Sequence[int]]) -> dict[str, float]:
    """How far the answers moved from their input (the pre-rank order ``0..n-1``): the share of lists whose order
    changed and the mean Kendall τ between each answer and its input (1 = the input kept). Copying the input passes
    a non-inferiority test trivially; these say whether the model re-ranked at all."""
    from scipy.stats import kendalltau

    if not orders:
        return {"changed_share": 0.0, "kendall_tau": 1.0}
    changed = [list(o) != list(range(len(o))) for o in orders]
    taus = [1.0 if not c else float(kendalltau(np.arange(len(o)), np.asarray(o)).statistic)
            for o, c in zip(orders, changed, strict=True)]
    return {"changed_share": float(np.mean(changed)), "kendall_tau": float(np.mean(taus))}


def answer_metrics(positions: np.ndarray | Sequence[int]) -> dict[str, float]:
    """Mean R@1, R@5, N@5 from the true item's 1-based position in each answer (0 = not in the list), computed by
    :func:`thinkrec.eval.metrics.rank_metrics` on the 0-based ranks."""
    per_list = rank_metrics(ranks_from_positions(positions), ks=(1, 5))
    return mean_metrics({k: per_list[k] for k in ANSWER_METRICS})


@torch.inference_mode()
def evaluate(model: Any, tokens: AnswerTokens, catalogue: Catalogue, requests: Sequence[RerankRequest],
             cfg: LLMStageConfig) -> dict[str, Any]:
    """Greedy constrained answers → ranks of the true item (malformed answers keep the pre-ranked order).

    Under a multi-process launch each rank answers a contiguous run of the ``eval_batch_size`` batches one process
    would form (the same prompts padded together, so the same answers) and every rank gets every list's result back
    in list order: the metrics are those of one process."""
    from thinkrec.llm.teacher import generate_answers

    model.eval()
    t0 = time.perf_counter()
    sid_len = catalogue.codes.shape[1]
    prompts = [stage_prompt(catalogue, r, cfg) for r in requests]
    # batches of similar prompt length: less left padding to run through the model (answers do not depend on it)
    lengths = [len(ids) for ids in tokens.tokenizer(prompts)["input_ids"]] if prompts else []
    by_length = sorted(range(len(requests)), key=lambda k: (lengths[k], k))
    batches = [by_length[b:b + cfg.eval_batch_size] for b in range(0, len(by_length), cfg.eval_batch_size)]
    lo, hi = parallel.bounds(len(batches), *parallel.world())
    answered: list[tuple[int, int, bool, str, list[int]]] = []  # per list: its index, the true item's position,
    # malformed, the answer, the order (candidate indices of the pre-rank, best first)
    for done, chunk in enumerate(batches[lo:hi], 1):
        n_cand = max(len(requests[k].candidates) for k in chunk)
        answers = generate_answers(model, tokens, [prompts[k] for k in chunk], 1, 0.0, cfg.max_reasoning_tokens,
                                   n_cand, sid_len)
        for k, (text,) in zip(chunk, answers, strict=True):
            r = requests[k]
            order = parse_output(text, [catalogue.sid_tuple(i) for i in r.candidates])
            kept = order if order is not None else list(range(len(r.candidates)))
            answered.append((k, kept.index(r.target) + 1 if r.target >= 0 else 0, order is None, text, list(kept)))
        progress.report("llm evaluation batches", done, hi - lo)
    answered = [a[1:] for a in sorted(parallel.gather_lists(answered))]  # back in list order
    ranks = [a[0] for a in answered]
    orders = [a[3] for a in answered]
    out = {**answer_metrics(np.array(ranks)), **order_change(orders)}
    out.update(malformed=sum(a[1] for a in answered), n=len(ranks), wall_s=time.perf_counter() - t0,
               examples=[a[2] for a in answered[:3]], ranks=[int(r) for r in ranks], orders=orders)
    out["lists_per_s"] = len(ranks) / max(out["wall_s"], 1e-9)
    return out


def pre_rank_metrics(requests: Sequence[RerankRequest]) -> dict[str, Any]:
    ranks = np.array([r.target + 1 if r.target >= 0 else 0 for r in requests])
    orders = [list(range(len(r.candidates))) for r in requests]
    return {**answer_metrics(ranks), **order_change(orders), "malformed": 0, "n": len(ranks), "ranks": ranks.tolist()}


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    """A validation evaluation as kept in the results: the metrics and per-list ranks, not the answers."""
    return {k: m[k] for k in (*ANSWER_METRICS, "changed_share", "kendall_tau", "n", "ranks") if k in m}


def teacher_metrics(teacher: Any, requests: Sequence[RerankRequest]) -> dict[str, Any]:
    """The teacher's own greedy rankings scored like the student's (no hint of the true item)."""
    orders = [teacher.greedy_order(r) for r in requests]
    ranks = np.array([o.index(r.target) + 1 if r.target >= 0 else 0 for o, r in zip(orders, requests, strict=True)])
    return {**answer_metrics(ranks), **order_change(orders), "malformed": 0, "n": len(ranks), "ranks": ranks.tolist()}


def choose_deployment(results: dict[str, Any], phases: Sequence[str]) -> tuple[str | None, str]:
    """The trained phase whose order the funnel may use: the best validation N@5 if it beats the pre-rank order's
    there (ties keep the input), else None."""
    base = results.get("pre-rank", {}).get("valid")
    if base is None:
        return None, "not used: no validation lists were answered (llm.n_valid = 0), so nothing shows it helps"
    valid = {p: results[p]["valid"]["ndcg@5"] for p in phases if "valid" in results.get(p, {})}
    figures = ", ".join(f"{p} {v:.4f}" for p, v in valid.items())
    best = select_best({"pre-rank": base["ndcg@5"], **valid}, prefer=("pre-rank",))  # ties keep the input
    if best != "pre-rank":
        return best, (f"{best}: best validation N@5 on {base['n']} lists ({figures}) above the pre-rank order's "
                      f"{base['ndcg@5']:.4f}")
    return None, (f"not used: no phase beat the pre-rank order's validation N@5 {base['ndcg@5']:.4f} on {base['n']} "
                  f"lists ({figures}); the funnel keeps its input order")


# ------------------------------------------------------------------------------------------------ the stage
def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def _restore(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in snap.items():
            params[k].copy_(v)


def partial_summary(catalogue: Catalogue, train_lists: RerankLists, test_lists: RerankLists,
                    valid_lists: RerankLists | None, cfg: LLMStageConfig, checkpoint_dir: str | Path) -> dict[str, Any]:
    """The stage's summary from the phases that finished so far (their records under ``checkpoint_dir``), for a run
    cut short: the pre-rank and teacher rows recomputed on the same lists, no deployment decision, no timings."""
    eval_reqs = select_requests(test_lists, cfg.n_eval, cfg.seed, True, "test:", cfg.max_candidates)
    valid_reqs = (select_requests(valid_lists, cfg.n_valid, cfg.seed + 2, True, "valid:", cfg.max_candidates)
                  if valid_lists is not None and cfg.n_valid else [])
    results: dict[str, Any] = {"pre-rank": pre_rank_metrics(eval_reqs)}
    if valid_reqs:
        results["pre-rank"]["valid"] = _brief(pre_rank_metrics(valid_reqs))
    if cfg.teacher.kind == "programmatic":
        results["teacher"] = teacher_metrics(make_teacher(cfg, catalogue, train_lists), eval_reqs)
    logs: dict[str, Any] = {"alignment": [], "sft": {}, "rl": []}
    traces, timings = {}, {}
    for name in ["alignment", *(f"sft-{m}" for m in cfg.sampling), "rl"]:
        path = Path(checkpoint_dir) / f"phase-{name}" / "state.json"
        if not path.exists():
            continue
        state = read_json(path)
        results[name], log = state["results"], state.get("log", [])
        timings.update(state.get("timings", {}))
        if name.startswith("sft-"):
            logs["sft"][name[4:]] = log
            traces[name[4:]] = state.get("traces", {})
        else:
            logs[name] = log
    head = np.cumsum(test_lists.mask, axis=1) <= cfg.max_candidates
    coverage = float(((test_lists.labels > 0) & test_lists.mask & head).any(1).mean())
    scaled = {name: {k: m[k] * coverage for k in ("recall@1", "recall@5", "ndcg@5")} for name, m in results.items()}
    return {"model": cfg.model, "config": asdict(cfg), "eval_lists_with_target": len(eval_reqs), "coverage": coverage,
            "metrics": results, "metrics_all_lists": scaled, "traces": traces, "deploy": None,
            "deploy_why": "partial: the stage has not finished", "valid_lists_with_target": len(valid_reqs),
            "timings": timings, "logs": logs, "partial": True,
            "rl_from": rl_start(cfg, results) if all(f"sft-{m}" in results for m in cfg.sampling) else None}


def rl_start(cfg: LLMStageConfig, results: dict[str, Any]) -> str:
    """The sampling mode whose SFT model DAPO continues from: ``rl_from``, or for "best" the one with the higher
    validation N@5 (ties and no validation: the first of ``sampling``)."""
    if cfg.rl_from != "best":
        return cfg.rl_from
    scores = [results.get(f"sft-{m}", {}).get("valid", {}).get("ndcg@5", float("-inf")) for m in cfg.sampling]
    return cfg.sampling[int(np.argmax(scores))]


def make_teacher(cfg: LLMStageConfig, catalogue: Catalogue, train_lists: RerankLists) -> Teacher:
    """The teacher ``llm.teacher.kind`` names in :data:`thinkrec.llm.teacher.TEACHERS` (a local one on this rank's
    device)."""
    cfg = replace(cfg, device=parallel.rank_device(cfg.device))
    return TEACHERS.get(cfg.teacher.kind, "llm.teacher.kind")(cfg, catalogue, train_lists)


def check_world(cfg: LLMStageConfig, size: int) -> None:
    """Every global batch must split evenly over the launch's ``size`` processes."""
    batches = {"llm.alignment.batch_size": cfg.alignment.batch_size, "llm.sft.batch_size": cfg.sft.batch_size,
               "llm.rl.prompts_per_step × llm.rl.num_generations": cfg.rl.prompts_per_step * cfg.rl.num_generations}
    bad = [f"{name} ({n})" for name, n in batches.items() if n % size]
    if bad:
        raise ValueError(f"{', '.join(bad)}: the global batch must split evenly over the {size} processes of this "
                         "launch (each process gets an equal share)")


def select_requests(lists: RerankLists, n: int, seed: int, with_target: bool, prefix: str,
                    max_candidates: int | None = None) -> list[RerankRequest]:
    reqs = requests_from_lists(lists, prefix, max_candidates)
    if with_target:
        reqs = [r for r in reqs if r.target >= 0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(reqs))[:n])
    return [reqs[i] for i in idx]


def run_llm_stage(catalogue: Catalogue, train_lists: RerankLists, test_lists: RerankLists,
                  train_sequences: Sequence[np.ndarray], cfg: LLMStageConfig, out_dir: str | Path,
                  model: Any = None, tokenizer: Any = None, teacher: Any = None, log: Any = print,
                  checkpoint_dir: str | Path | None = None, valid_lists: RerankLists | None = None) -> dict[str, Any]:
    """Runs the whole stage; ``model``/``tokenizer``/``teacher`` override the configured ones (tests, benchmarks).

    With ``checkpoint_dir`` a killed stage resumes: each finished phase (alignment, each SFT, DAPO) leaves a record
    there (its trained weights as safetensors, its evaluation, logs and trace statistics as JSON) and is not redone;
    the phase that was running resumes from its Trainer checkpoint.

    With ``valid_lists`` every phase is also answered on ``n_valid`` validation lists, and ``deploy`` names the phase
    whose validation N@5 beat the pre-rank order's (the best one), or None: the funnel's rule that no stage may make
    its input worse.

    Under a multi-process launch every rank calls this and gets the same summary back; only rank 0 logs and writes,
    and every rank returns once rank 0's files are written."""
    if not cfg.sampling or any(m not in ("target", "reject") for m in cfg.sampling):
        raise ValueError(f"llm.sampling must list target and/or reject, got {cfg.sampling}")
    if cfg.rl_from != "best" and cfg.rl_from not in cfg.sampling:
        raise ValueError(f"llm.rl_from={cfg.rl_from!r} must be one of llm.sampling {cfg.sampling}")
    main = parallel.is_main()
    check_world(cfg, parallel.world()[1])
    device = parallel.rank_device(cfg.device)
    parallel.init(device)
    with contextlib.nullcontext() if main else progress.progress_callback(None):  # the other ranks stay quiet
        summary = _run_stage(catalogue, train_lists, test_lists, train_sequences, cfg, Path(out_dir), device, model,
                             tokenizer, teacher, log if main else (lambda *_: None), checkpoint_dir, valid_lists)
    parallel.barrier()  # every rank returns with rank 0's files in place
    return summary


def _run_stage(catalogue: Catalogue, train_lists: RerankLists, test_lists: RerankLists,
               train_sequences: Sequence[np.ndarray], cfg: LLMStageConfig, out_dir: Path, device: str, model: Any,
               tokenizer: Any, teacher: Any, log: Any, checkpoint_dir: str | Path | None,
               valid_lists: RerankLists | None = None) -> dict[str, Any]:
    main = parallel.is_main()
    out_dir.mkdir(parents=True, exist_ok=True)  # every rank: the trainers and trace parts need it at once
    torch.manual_seed(cfg.seed)
    t_stage = time.perf_counter()
    timings: dict[str, float] = {}
    bf16 = cfg.dtype == "bfloat16"
    if model is None:
        t = time.perf_counter()
        model, tokenizer = load_causal_lm(cfg.model, device, cfg.dtype)
        timings["load_s"] = time.perf_counter() - t
    model = model.to(device)
    new_ids = add_sid_tokens(model, tokenizer, catalogue.radix)
    model = apply_lora(model, cfg.lora, new_ids)
    tokens = AnswerTokens(tokenizer)
    n_trainable, n_total = trainable_parameters(model)
    log(f"LLM: {n_total / 1e6:.1f} M parameters, {n_trainable / 1e6:.2f} M trainable, {len(new_ids)} SID tokens")

    eval_reqs = select_requests(test_lists, cfg.n_eval, cfg.seed, True, "test:", cfg.max_candidates)
    head = np.cumsum(test_lists.mask, axis=1) <= cfg.max_candidates
    coverage = float(((test_lists.labels > 0) & test_lists.mask & head).any(1).mean())
    valid_reqs = (select_requests(valid_lists, cfg.n_valid, cfg.seed + 2, True, "valid:", cfg.max_candidates)
                  if valid_lists is not None and cfg.n_valid else [])
    results: dict[str, Any] = {"pre-rank": pre_rank_metrics(eval_reqs)}
    if valid_reqs:
        results["pre-rank"]["valid"] = _brief(pre_rank_metrics(valid_reqs))
    phases = ["alignment", *(f"sft-{m}" for m in cfg.sampling), "rl"]  # each ends with its evaluation

    final_step = {**{f"sft-{m}": cfg.sft.steps for m in cfg.sampling}, "rl": cfg.rl.steps}
    last_point: dict[str, tuple[int, dict[str, Any]]] = {}  # per phase: its latest learning-curve evaluation

    def _eval(name: str) -> None:
        n_test = cfg.n_eval_alignment if name == "alignment" and cfg.n_eval_alignment else len(eval_reqs)
        results[name] = evaluate(model, tokens, catalogue, eval_reqs[:n_test], cfg)
        if valid_reqs:
            step, m = last_point.get(name, (-1, None))
            # the curve's point at the phase's last step answered the same lists with the same weights
            results[name]["valid"] = _brief(m if step == final_step.get(name) else
                                            evaluate(model, tokens, catalogue, valid_reqs, cfg))
        progress.report("llm phases (alignment, SFT, RL)", phases.index(name) + 1, len(phases))
        m = results[name]
        log(f"  {name}: R@1 {m['recall@1']:.3f} R@5 {m['recall@5']:.3f} N@5 {m['ndcg@5']:.3f} "
            f"changed {m['changed_share']:.2f} τ {m['kendall_tau']:.2f} ({m['n']} lists, {m['wall_s']:.0f}s, "
            f"malformed {m['malformed']})" + (f"; validation N@5 {m['valid']['ndcg@5']:.3f}" if "valid" in m else ""))

    key = config_hash({"llm": cfg, "lists": [len(train_lists), len(test_lists)], "items": len(catalogue.titles),
                       "parameters": n_total})

    def curve(name: str) -> Any:
        """The learning-curve probe of a training phase: validation N@5 (and how much it re-orders) at a step."""
        if not valid_reqs:
            return None

        def point(step: int) -> dict[str, float]:
            m = evaluate(model, tokens, catalogue, valid_reqs, cfg)
            last_point[name] = (step, m)
            log(f"    {name} step {step}: validation N@5 {m['ndcg@5']:.3f}, changed {m['changed_share']:.2f}")
            return {k: m[k] for k in ("ndcg@5", "recall@1", "changed_share", "kendall_tau")}

        return point

    def record(name: str) -> Checkpointer:
        return Checkpointer(subdir(checkpoint_dir, f"phase-{name}"), key, log)

    def finished(name: str) -> dict[str, Any] | None:
        """A finished phase's record, its weights put back into the model and its evaluation into the results."""
        state = record(name).load()
        if state is not None:
            _restore(model, state["params"])
            results[name] = state["results"]
            timings.update(state["timings"])
            progress.report("llm phases (alignment, SFT, RL)", phases.index(name) + 1, len(phases))
            log(f"  {name}: finished earlier, weights and evaluation loaded from {record(name).directory}")
        return state

    def finish(name: str, train_log: list[dict], **extra: Any) -> None:
        _eval(name)
        # every rank calls it: the Checkpointer writes on rank 0 and the others wait for it
        record(name).save({"params": _snapshot(model), "results": results[name], "log": train_log,
                           "timings": {k: v for k, v in timings.items() if k.startswith(name.replace("-", "_"))},
                           **extra})

    # 1. alignment
    if (done := finished("alignment")) is not None:
        align_log = done["log"]
    else:
        t = time.perf_counter()
        n_align = cfg.alignment.steps * cfg.alignment.batch_size * cfg.alignment.grad_accum
        examples = alignment_examples(catalogue, train_sequences, n_align, cfg.seed, cfg.alignment_plain_text_share,
                                      cfg.n_history)
        align_log = train_lm(model, tokenizer, alignment_features(tokenizer, examples, cfg.alignment.max_len),
                             cfg.alignment, out_dir / "trainer", device, bf16, log,
                             checkpoint_dir=subdir(checkpoint_dir, "trainer-alignment"))
        timings["alignment_s"] = time.perf_counter() - t
        finish("alignment", align_log)
    aligned = _snapshot(model)

    # 2. traces + 3. SFT, per sampling mode (each SFT starts from the aligned model)
    # only lists that contain the true item can yield a trace (both sampling modes rank it first)
    train_reqs = select_requests(train_lists, cfg.n_train_requests, cfg.seed + 1, True, "train:", cfg.max_candidates)
    prompts = {r.request_id: stage_prompt(catalogue, r, cfg) for r in train_reqs}
    sids = {r.request_id: [catalogue.sid_tuple(i) for i in r.candidates] for r in train_reqs}
    teacher = teacher if teacher is not None else make_teacher(cfg, catalogue, train_lists)
    if hasattr(teacher, "scores"):  # the ceiling: the (programmatic) teacher's own greedy ranking of the test lists
        results["teacher"] = teacher_metrics(teacher, eval_reqs)
    trace_stats, sft_logs, states = {}, {}, {}
    for mode in cfg.sampling:
        _restore(model, aligned)
        if (done := finished(f"sft-{mode}")) is not None:
            sft_logs[mode], trace_stats[mode] = done["log"], done["traces"]
            states[mode] = _snapshot(model)
            continue
        t = time.perf_counter()
        traces, stats = sample_traces(teacher, catalogue, train_reqs, mode, out_dir / f"traces_{mode}.jsonl",
                                      cfg.teacher.max_tries, cfg.teacher.temperature, cfg.n_history, cfg.with_titles,
                                      cfg.seed, cfg.prompt_ranks, cfg.title_words)
        trace_stats[mode] = {"teacher": teacher.name, **stats.summary()}
        log(f"traces ({mode}, {teacher.name}): {stats.accepted} accepted of {len(train_reqs) - stats.skipped_no_target}"
            f" (acceptance {stats.acceptance_rate:.2f}, tries/sample {stats.tries_per_sample:.2f}, "
            f"malformed {stats.malformed})")
        feats = sft_features(tokens, traces, prompts, sids, cfg.sft)
        sft_logs[mode] = train_lm(model, tokenizer, feats, cfg.sft, out_dir / "trainer", device, bf16, log,
                                  checkpoint_dir=subdir(checkpoint_dir, f"trainer-sft-{mode}"),
                                  curve=curve(f"sft-{mode}"), curve_every=cfg.curve_every)
        timings[f"sft_{mode}_s"] = time.perf_counter() - t
        finish(f"sft-{mode}", sft_logs[mode], traces=trace_stats[mode])
        states[mode] = _snapshot(model)

    # 4. DAPO from the chosen SFT model, on training lists that contain the true item
    rl_from = rl_start(cfg, results)
    log(f"DAPO starts from SFT ({rl_from} sampling)" + (" — the better on validation" if cfg.rl_from == "best" else ""))
    _restore(model, states[rl_from])
    if (done := finished("rl")) is not None:
        rl_log = done["log"]
    else:
        t = time.perf_counter()
        model.train()
        rl_reqs = train_reqs
        n_cand = max(len(r.candidates) for r in rl_reqs)
        max_completion = max_answer_tokens(tokens, n_cand, catalogue.codes.shape[1], cfg.rl.max_reasoning_tokens)
        rl_log = train_dapo(model, tokenizer, [prompts[r.request_id] for r in rl_reqs], [r.target for r in rl_reqs],
                            cfg.rl, out_dir / "trainer", max_completion, device, bf16, log,
                            checkpoint_dir=subdir(checkpoint_dir, "trainer-rl"), curve=curve("rl"),
                            curve_every=cfg.curve_every)
        timings["rl_s"] = time.perf_counter() - t
        finish("rl", rl_log)

    deploy, deploy_why = choose_deployment(results, phases)
    log(f"deployment: {deploy_why}")
    # 5. save (rank 0; the ranks' weights are equal after data-parallel training)
    scaled = {name: {k: m[k] * coverage for k in ("recall@1", "recall@5", "ndcg@5")} for name, m in results.items()}
    summary = {
        "model": cfg.model, "config": asdict(cfg), "parameters": n_total, "trainable": n_trainable,
        "eval_lists_with_target": len(eval_reqs), "coverage": coverage, "metrics": results,
        "metrics_all_lists": scaled, "traces": trace_stats, "deploy": deploy, "deploy_why": deploy_why,
        "valid_lists_with_target": len(valid_reqs), "timings": timings, "rl_from": rl_from,
        "wall_s": time.perf_counter() - t_stage,
        "logs": {"alignment": align_log, "sft": sft_logs, "rl": rl_log}, "processes": parallel.world()[1],
    }
    if main:
        save_adapter(model, tokenizer, out_dir / "adapter")
        write_json(out_dir / "metrics.json", summary)
    return summary
