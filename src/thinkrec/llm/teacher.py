"""Teachers and reasoning traces (GR2's target sampling and reject sampling).

Three teachers share one interface (``answer(request, prompt, n, temperature) -> list[str]`` raw answers); they are
registered in ``TEACHERS`` under the names ``llm.teacher.kind`` takes (``openai``, ``hf``, ``programmatic``):

* ``OpenAITeacher`` — any OpenAI-compatible chat endpoint (vLLM, llama.cpp, a hosted API): base URL, model name,
  and the API key read from an environment variable;
* ``HFTeacher`` — a local Hugging Face model, decoding constrained to the answer format;
* ``ProgrammaticTeacher`` — a grounded teacher for machines without a strong LLM: it ranks with a real scorer (a
  logistic model fitted on the training lists' leak-free features) and writes its reasoning from the catalogue and
  the training statistics (categories, co-purchase transitions, popularity, content similarity).

``sample_traces`` runs target sampling (the teacher is told the true next item and must rank it first) or reject
sampling (the teacher is not told; an answer is kept only if it ranks the true item first), up to ``max_tries``
per request; malformed answers (pydantic validation of the JSON, unknown or repeated SIDs) are retried and counted.
Accepted traces are cached as JSONL with provenance and re-used on the next run.

Under a multi-process launch (:mod:`thinkrec.llm.parallel`) each rank samples a contiguous slice of the requests;
every rank gets all accepted traces back in request order, and rank 0 alone keeps the trace file. A teacher with a
``reseed(seed)`` method is reseeded per request from ``(seed, mode, request id)``, so what a request draws does not
depend on which requests were sampled before it — nor on the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from thinkrec.llm import parallel
from thinkrec.llm.answer import (
    AnswerTokens,
    constrained_generate,
    greedy_constrained,
    max_answer_tokens,
    render_answer,
)
from thinkrec.llm.model import add_sid_tokens, load_causal_lm
from thinkrec.llm.prompts import Catalogue, rerank_prompt
from thinkrec.llm.rewards import parse_output
from thinkrec.rerank.lists import FEATURES, RerankLists
from thinkrec.utils.io import atomic_path
from thinkrec.utils.registry import Registry

SYSTEM_PROMPT = ("You are an expert recommender. Items are written as Semantic IDs between <|sid_begin|> and "
                 "<|sid_end|>. Answer only with the JSON object requested, citing every candidate SID exactly once.")


@dataclass
class RerankRequest:
    """One list to re-rank: history and candidates as dense item ids (candidates in the pre-ranked order)."""

    request_id: str
    history: list[int]
    candidates: list[int]
    target: int  # index of the true next item among the candidates, −1 when it was not retrieved
    features: list[list[float]] | None = None


def requests_from_lists(lists: RerankLists, prefix: str = "", max_candidates: int | None = None) -> list[RerankRequest]:
    """One request per list; ``max_candidates`` keeps the first K of the initial order (GR2 re-ranks K = 10)."""
    out = []
    for n in range(len(lists)):
        keep = lists.items[n] >= 0
        if max_candidates is not None:
            keep &= np.cumsum(keep) <= max_candidates
        cands = lists.items[n][keep].tolist()
        labels = lists.labels[n][keep]
        target = int(np.argmax(labels)) if (labels > 0).any() else -1
        hist = [int(h) - 1 for h in lists.history[n] if h > 0]
        out.append(RerankRequest(f"{prefix}{int(lists.users[n])}", hist, cands, target,
                                 lists.features[n][keep].tolist()))
    return out


class Teacher(Protocol):
    name: str

    def answer(self, request: RerankRequest, prompt: str, n: int, temperature: float) -> list[str]: ...


# ------------------------------------------------------------------------------------------------ teachers
class OpenAITeacher:
    """Chat completions from an OpenAI-compatible server (``{base_url}/chat/completions``)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 512,
                 timeout_s: float = 120.0, retries: int = 3):
        import httpx

        self.name = f"openai:{model}"
        self.model, self.max_tokens, self.retries = model, max_tokens, retries
        self.seed: int | None = None
        key = os.environ.get(api_key_env, "EMPTY")
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                   headers={"Authorization": f"Bearer {key}"})

    def reseed(self, seed: int) -> None:
        """Send OpenAI's ``seed`` from here on (one more per call, so retries differ). Servers honour it at best
        effort (vLLM does per request)."""
        self.seed = seed

    def answer(self, request: RerankRequest, prompt: str, n: int, temperature: float) -> list[str]:
        import httpx

        body = {"model": self.model, "n": n, "temperature": temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]}
        if self.seed is not None:
            body["seed"], self.seed = self.seed, self.seed + 1
        for attempt in range(self.retries):
            try:
                r = self.client.post("/chat/completions", json=body)
                r.raise_for_status()
                return [c["message"]["content"] or "" for c in r.json()["choices"]]
            except (httpx.HTTPError, KeyError, ValueError):
                if attempt == self.retries - 1:
                    raise
                time.sleep(2**attempt)
        return []


class HFTeacher:
    """A local Hugging Face causal LM, sampling answers under the ranking constraint."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "hf", max_reasoning_tokens: int = 64):
        self.name = f"hf:{name}"
        self.model, self.tokenizer = model, tokenizer
        self.tokens = AnswerTokens(tokenizer)
        self.max_reasoning_tokens = max_reasoning_tokens

    def reseed(self, seed: int) -> None:
        """Sampling draws from torch's global RNG (``sample_traces`` restores it afterwards)."""
        torch.manual_seed(seed)

    @torch.inference_mode()
    def answer(self, request: RerankRequest, prompt: str, n: int, temperature: float) -> list[str]:
        return generate_answers(self.model, self.tokens, [prompt], n, temperature, self.max_reasoning_tokens,
                                len(request.candidates), sid_len=_sid_len(prompt))[0]


def _sid_len(prompt: str) -> int:
    from thinkrec.llm.answer import prompt_candidates

    c = prompt_candidates(prompt)
    return len(c[0]) if c else 4


@torch.inference_mode()
def generate_answers(model: Any, tokens: AnswerTokens, prompts: Sequence[str], n: int, temperature: float,
                     max_reasoning_tokens: int, n_candidates: int, sid_len: int) -> list[list[str]]:
    """``n`` constrained answers per prompt (greedy when ``temperature`` is 0)."""
    tok = tokens.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True).to(model.device)
    max_new = max_answer_tokens(tokens, n_candidates, sid_len, max_reasoning_tokens)
    if temperature <= 0 and n == 1:  # greedy: the same answers as generate's, the head only where there is a choice
        new = greedy_constrained(model, tokens, enc["input_ids"], enc["attention_mask"], max_new, max_reasoning_tokens)
    else:
        gen = constrained_generate(model, tokens, max_reasoning_tokens)
        kwargs: dict[str, Any] = {"do_sample": temperature > 0, "num_return_sequences": n, "max_new_tokens": max_new,
                                  "pad_token_id": tok.pad_token_id}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        new = gen(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


class ProgrammaticTeacher:
    """Grounded teacher: logistic scorer over the leak-free list features, reasoning written from the evidence."""

    name = "programmatic"

    def __init__(self, catalogue: Catalogue, weights: np.ndarray, bias: float = 0.0, seed: int = 0,
                 keep_order: bool = False):
        self.catalogue, self.weights, self.bias = catalogue, np.asarray(weights, dtype=np.float64), float(bias)
        self.rng = np.random.default_rng(seed)
        self.keep_order = bool(keep_order)  # answers promote one candidate and keep the rest in the input order
        if self.keep_order:  # its traces differ, so they must not be served from the other teacher's cache
            self.name = "programmatic-keep-order"

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    @classmethod
    def fit(cls, catalogue: Catalogue, lists: RerankLists, seed: int = 0, steps: int = 200,
            keep_order: bool = False) -> ProgrammaticTeacher:
        """Logistic regression of the click label on the features (training lists only)."""
        m = lists.mask
        x = torch.from_numpy(lists.features[m]).double()
        y = torch.from_numpy(lists.labels[m]).double()
        w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y) + 1e-4 * w[:-1].square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        w = w.detach().numpy()
        return cls(catalogue, w[:-1], float(w[-1]), seed, keep_order)

    def scores(self, request: RerankRequest) -> np.ndarray:
        if request.features is None:
            raise ValueError(f"request {request.request_id}: the programmatic teacher needs candidate features")
        return np.asarray(request.features, dtype=np.float64) @ self.weights + self.bias

    def answer(self, request: RerankRequest, prompt: str, n: int, temperature: float, hint: int | None = None
               ) -> list[str]:
        s = self.scores(request)
        out = []
        for _ in range(n):
            if hint is not None:  # target sampling: the true item first, the rest by score
                order = [hint] + [int(i) for i in np.argsort(-s, kind="stable") if i != hint]
            elif temperature > 0:  # Plackett–Luce sample through Gumbel noise
                order = np.argsort(-(s / temperature + self.rng.gumbel(size=s.shape))).tolist()
            else:
                order = np.argsort(-s, kind="stable").tolist()
            order = self._edit(order)
            ranking = [self.catalogue.sid_tuple(request.candidates[i]) for i in order]
            out.append(render_answer(self.explain(request, order), ranking))
        return out

    def greedy_order(self, request: RerankRequest) -> list[int]:
        """The teacher's own ranking without a hint (what its greedy answer would be): candidate indices, best first."""
        return self._edit(np.argsort(-self.scores(request), kind="stable").tolist())

    def _edit(self, order: list[int]) -> list[int]:
        """With ``keep_order`` a minimal edit of the input: ``order``'s top pick promoted, the rest where they were."""
        return [order[0]] + [i for i in range(len(order)) if i != order[0]] if self.keep_order else order

    def explain(self, request: RerankRequest, order: Sequence[int]) -> str:
        cat = self.catalogue
        f = np.asarray(request.features)
        col = {name: i for i, name in enumerate(FEATURES)}
        hist = request.history[-2:]
        parts = []
        if hist:
            recent = "; ".join(f"{cat.title(i, 6)} ({cat.categories[i] or 'uncategorised'})" for i in reversed(hist))
            parts.append(f"Recent purchases: {recent}.")
        for rank, idx in enumerate(order[:2]):
            item = request.candidates[idx]
            ev = []
            if f[idx, col["log_transition"]] > 0:
                ev.append(f"bought right after the last item {int(round(np.expm1(f[idx, col['log_transition']])))} times")
            if f[idx, col["same_cat_last"]] > 0:
                ev.append(f"same category as the last purchase ({cat.categories[item]})")
            elif f[idx, col["cat_share_hist"]] > 0:
                ev.append(f"{f[idx, col['cat_share_hist']]:.0%} of recent purchases are {cat.categories[item]}")
            if f[idx, col["cos_hist"]] > 0.5:
                ev.append(f"similar to recent items (cosine {f[idx, col['cos_hist']]:.2f})")
            if f[idx, col["log_pop"]] > 0.6:
                ev.append("popular")
            if f[idx, col["in_history"]] > 0:
                ev.append("already bought once")
            lead = "Top pick" if rank == 0 else "Next"
            parts.append(f"{lead}: {cat.title(item, 6)}, " + (", ".join(ev) if ev else "a weaker but plausible match") + ".")
        return " ".join(parts)


# ------------------------------------------------------------------------------------------------ registry
# a builder takes the stage config (``LLMStageConfig``: ``teacher``, ``seed``, ``device``, ``dtype``, …), the
# catalogue and the training lists, and returns a ready teacher
TeacherBuilder = Callable[[Any, Catalogue, RerankLists], Teacher]
TEACHERS: Registry[TeacherBuilder] = Registry("teacher")


def _programmatic(cfg: Any, catalogue: Catalogue, train_lists: RerankLists) -> Teacher:
    return ProgrammaticTeacher.fit(catalogue, train_lists, seed=cfg.seed, keep_order=cfg.teacher.keep_order)


def _openai(cfg: Any, catalogue: Catalogue, train_lists: RerankLists) -> Teacher:
    t = cfg.teacher
    if not t.model:
        raise ValueError("llm.teacher.model: name the served model for an OpenAI-compatible teacher")
    return OpenAITeacher(t.base_url, t.model, t.api_key_env)


def _hf(cfg: Any, catalogue: Catalogue, train_lists: RerankLists) -> Teacher:
    t = cfg.teacher
    if not t.model:
        raise ValueError("llm.teacher.model: give the path (or hub id) of the Hugging Face teacher model")
    model, tok = load_causal_lm(t.model, cfg.device, cfg.dtype)
    add_sid_tokens(model, tok, catalogue.radix)
    return HFTeacher(model, tok, Path(t.model).name, cfg.max_reasoning_tokens)


TEACHERS.register("programmatic", "logistic scorer on the lists' leak-free features, reasoning written from the "
                  "catalogue (no LLM needed)", _programmatic)
TEACHERS.register("openai", "any OpenAI-compatible chat endpoint (vLLM, llama.cpp, a hosted API) at "
                  "llm.teacher.base_url", _openai)
TEACHERS.register("hf", "a local Hugging Face causal LM (llm.teacher.model), decoding constrained to the answer "
                  "format", _hf)


# ------------------------------------------------------------------------------------------------ traces
@dataclass
class TraceStats:
    requests: int = 0
    skipped_no_target: int = 0
    accepted: int = 0
    tries: int = 0
    malformed: int = 0
    cached: int = 0
    wall_s: float = 0.0
    per_mode: dict[str, Any] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        done = self.requests - self.skipped_no_target - self.cached
        return self.accepted / done if done > 0 else 0.0

    @property
    def tries_per_sample(self) -> float:
        done = self.requests - self.skipped_no_target - self.cached
        return self.tries / done if done > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, tries_per_sample=self.tries_per_sample)
        return d

    @classmethod
    def combine(cls, parts: Sequence[TraceStats]) -> TraceStats:
        """The statistics of several ranks' slices as one run's: counts add up, the wall time is the slowest's."""
        counts = ("requests", "skipped_no_target", "accepted", "tries", "malformed", "cached")
        out = cls(**{k: sum(getattr(p, k) for p in parts) for k in counts})
        out.wall_s = max((p.wall_s for p in parts), default=0.0)
        return out


def target_hint(catalogue: Catalogue, item: int) -> str:
    return (f"Hint (for the teacher only): the user's actual next item is {catalogue.sid(item)} "
            f"{catalogue.title(item)}. Explain from the history why it fits, and rank it first.")


def _read_cache(path: Path) -> dict[str, dict]:
    """The trace file's rows and those of any rank's part file next to it (left by a killed launch), by request."""
    out: dict[str, dict] = {}
    for f in [path, *_part_files(path)]:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: the request is sampled again
                continue
            out[row["request_id"]] = row
    return out


def _part_file(path: Path, rank: int) -> Path:
    return path.with_name(f".{path.name}.part-{rank}")


def _part_files(path: Path) -> list[Path]:
    """Part files next to ``path``, by rank."""
    parts = path.parent.glob(f".{path.name}.part-*") if path.parent.is_dir() else []
    return sorted((p for p in parts if p.name.rsplit("-", 1)[1].isdigit()), key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _merge_parts(path: Path) -> None:
    """Rank 0: append the other ranks' part files (in rank order) to the trace file, atomically, and remove them.
    Lines the file already holds are skipped, so a merge cut by a kill is simply done again."""
    parts = _part_files(path)
    if not parts:
        return
    lines = path.read_text().splitlines() if path.exists() else []
    seen = set(lines)
    for part in parts:
        lines += [line for line in part.read_text().splitlines() if line not in seen]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    for part in parts:
        part.unlink()


def request_seed(seed: int, key: str) -> int:
    """A request's own sampling seed, from the run's seed and the request's key (``mode:request_id``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def _fork_rng() -> Any:
    """Restore torch's global RNG (CPU and the current GPU) after a teacher reseeded it."""
    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if gpu else [])


def sample_traces(teacher: Teacher, catalogue: Catalogue, requests: Sequence[RerankRequest], mode: str,
                  cache: str | Path, max_tries: int = 4, temperature: float = 1.0, n_history: int = 5,
                  with_titles: bool = True, seed: int = 0, ranked: bool = False,
                  title_words: int = 8) -> tuple[list[dict], TraceStats]:
    """Target or reject sampling over ``requests``; returns the accepted traces (cached ones included) in request
    order, and the statistics.

    Under a multi-process launch every rank samples its contiguous slice of ``requests`` (rank r > 0 logging its
    rows to a hidden part file next to ``cache``, so a killed launch resumes from them); every rank returns every
    rank's traces, and rank 0 appends the parts to ``cache`` and removes them — the file one process writes."""
    if mode not in ("target", "reject"):
        raise ValueError(f"sampling mode must be 'target' or 'reject', got {mode!r}")
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    rank, size = parallel.world()
    lo, hi = parallel.bounds(len(requests), rank, size)
    with _fork_rng():
        traces, stats = _sample(teacher, catalogue, requests[lo:hi], mode, _read_cache(cache),
                                cache if rank == 0 else _part_file(cache, rank), max_tries, temperature, n_history,
                                with_titles, seed, ranked, title_words)
    if size == 1:
        return traces, stats
    traces = parallel.gather_lists(traces)
    stats = TraceStats.combine(parallel.gather(stats))
    if rank == 0:
        _merge_parts(cache)
    parallel.barrier()
    return traces, stats


def _sample(teacher: Teacher, catalogue: Catalogue, requests: Sequence[RerankRequest], mode: str,
            done: dict[str, dict], log_to: Path, max_tries: int, temperature: float, n_history: int,
            with_titles: bool, seed: int, ranked: bool = False, title_words: int = 8) -> tuple[list[dict], TraceStats]:
    """One process's sampling: ``done`` rows are reused, new rows are appended to ``log_to`` as they come."""
    stats = TraceStats(requests=len(requests))
    traces: list[dict] = []
    t0 = time.perf_counter()
    reseed = getattr(teacher, "reseed", None)
    with log_to.open("a") as fh:
        for req in requests:
            if req.target < 0:
                stats.skipped_no_target += 1
                continue
            key = f"{mode}:{req.request_id}"
            cand_sids = [catalogue.sid_tuple(i) for i in req.candidates]
            hint = target_hint(catalogue, req.candidates[req.target]) if mode == "target" else None
            prompt = rerank_prompt(catalogue, req.history, req.candidates, n_history, with_titles, hint, ranked,
                                   title_words)
            digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
            cached = done.get(key)
            # a cached trace counts only for the same teacher and the same prompt (SIDs, history, candidates)
            if cached is not None and cached.get("teacher") == teacher.name and cached.get("prompt_sha256") == digest:
                stats.cached += 1
                if cached["accepted"]:
                    traces.append(cached)
                continue
            if reseed is not None:
                reseed(request_seed(seed, key))
            row = {"request_id": key, "mode": mode, "teacher": teacher.name, "accepted": False, "tries": 0,
                   "malformed": 0, "prompt_sha256": digest}
            for _ in range(max_tries):
                row["tries"] += 1
                if isinstance(teacher, ProgrammaticTeacher):
                    text = teacher.answer(req, prompt, 1, temperature, hint=req.target if hint else None)[0]
                else:
                    text = teacher.answer(req, prompt, 1, temperature)[0]
                order = parse_output(text, cand_sids)
                if order is None:
                    row["malformed"] += 1
                    continue
                if order[0] == req.target:
                    from thinkrec.llm.rewards import _JSON_OBJECT, RankedOutput

                    parsed = RankedOutput.model_validate(json.loads(_JSON_OBJECT.search(text).group(0)))
                    row.update(accepted=True, reasoning=parsed.reasoning, order=order,
                               answer=render_answer(parsed.reasoning, [cand_sids[i] for i in order]))
                    break
            row["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            stats.tries += row["tries"]
            stats.malformed += row["malformed"]
            if row["accepted"]:
                stats.accepted += 1
                traces.append(row)
    stats.wall_s = time.perf_counter() - t0
    return traces, stats
