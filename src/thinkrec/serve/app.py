"""The HTTP API of a trained funnel (FastAPI): ``thinkrec serve --run DIR``.

The run directory's funnel is loaded once at start-up; ``/v1/recommend`` requests are validated here (every
client mistake is a 4xx naming the field) and then micro-batched (:mod:`thinkrec.serve.batcher`), so concurrent
requests share one batched beam search and one re-ranker pass. ``/metrics`` is Prometheus' text format.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinkrec.pipeline.funnel import Funnel, Requests, UserRecommendations
from thinkrec.serve.batcher import BatcherConfig, MicroBatcher, Overloaded
from thinkrec.serve.schemas import (
    BatchRequest,
    BatchResponse,
    Info,
    ItemDetail,
    ItemList,
    Recommendation,
    RecommendRequest,
    UserHistory,
    UserList,
)
from thinkrec.utils.config import check_valid, spec
from thinkrec.utils.io import read_json

COLD_START = ("an empty history is served from the popularity fallback (the run's most interacted items); the "
              "response says cold_start = true")


@dataclass
class ServeConfig:
    batching: BatcherConfig = field(default_factory=BatcherConfig)
    max_body_bytes: int = spec(1_000_000, ge=1)  # larger request bodies get 413
    warmup: bool = True  # one request through every stage before /readyz says ready
    drain_timeout_s: float = spec(30.0, ge=0.0)
    # serving profile: each candidate source's list length before the merge (None: the run's candidates.per_source,
    # i.e. the merged set's size); smaller lists make the generative sources' beams, the hot path, narrower
    per_source: int | None = spec(None, ge=1)


class ApiError(Exception):
    """A client's mistake: HTTP ``status`` with the offending ``field`` named."""

    def __init__(self, status: int, field: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.field, self.message, self.extra = status, field, message, extra


def _error(status: int, field: str | None, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "field": field, "message": message, **extra}}, status, headers=headers)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("thinkrec_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("thinkrec_request_seconds", "Request latency by endpoint", ["endpoint"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5, 5))
        self.batch_size = Histogram("thinkrec_batch_size", "Requests per micro-batched funnel pass", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("thinkrec_batch_seconds", "Seconds per micro-batched funnel pass", registry=r,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.stage_seconds = Counter("thinkrec_stage_seconds", "Seconds spent per funnel stage", ["stage"], registry=r)
        self.queue_depth = Gauge("thinkrec_queue_depth", "Requests waiting for a batch", registry=r)
        self.overloaded = Counter("thinkrec_overloaded", "Requests refused with 503 (queue full)", registry=r)
        self.errors = Counter("thinkrec_internal_errors", "Requests answered 500 (a bug), by exception type",
                              ["type"], registry=r)


log = logging.getLogger("thinkrec.serve")


class _BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes get 413, whether announced by Content-Length or streamed."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = _error(413, "body", f"request body over {self.limit} bytes")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise _TooBig
            return msg

        started = False

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


class FunnelService:
    """Validation, grouping and response building around a loaded :class:`Funnel` (no HTTP here)."""

    def __init__(self, funnel: Funnel, metrics: _Metrics | None = None):
        self.funnel = funnel
        self.metrics = metrics
        models = funnel.models
        self.retrievers = list(models["scorers"]) + (["merged"] if funnel.record.get("retriever") == "merged"
                                                     or (funnel.root / "candidates" / "info.json").exists() else [])
        self.rerankers = list(models["rerankers"])
        lists_info = funnel.root / "rerank" / "lists" / "info.json"
        self._merged_rerankers = lists_info.exists() and read_json(lists_info).get("candidates") == "merged"
        items = funnel.dataset.items.sort("item")
        self._lower_titles = items["title"].str.to_lowercase() if "title" in items.columns else None
        self._categories = items["categories"].to_list() if "categories" in items.columns else None
        offsets, seq = funnel.dataset.sequences()
        self._counts = np.bincount(seq, minlength=len(funnel.item_ids))
        self._sidmap = self._find_sidmap()

    def _find_sidmap(self) -> Any:
        from thinkrec.pipeline.scorers import SCORERS

        for name in self.funnel.models["scorers"]:
            if SCORERS.get(name).generative:
                return self.funnel.scorer(name).sidmap
        return None

    # -- validation: every client mistake is an ApiError naming the field, raised before any work is queued
    def resolve(self, req: RecommendRequest, where: str = "") -> tuple[tuple, Requests]:
        f = self.funnel
        if req.retriever is not None and req.retriever not in self.retrievers:
            raise ApiError(422, where + "retriever", f"unknown retriever {req.retriever!r}; trained: {', '.join(self.retrievers)}")
        if req.reranker is not None and req.reranker not in self.rerankers:
            raise ApiError(422, where + "reranker", f"unknown re-ranker {req.reranker!r}; trained: {', '.join(self.rerankers) or 'none'}")
        if req.reranker is not None and req.rerank is False:
            raise ApiError(422, where + "reranker", "`reranker` names a re-ranker but `rerank` is false")
        retriever = req.retriever or f.record.get("retriever")
        reranker = (req.reranker or f.record.get("reranker")) if req.rerank else None
        if reranker is not None and retriever != "merged" and self._merged_rerankers:
            raise ApiError(422, where + "retriever", f"the re-rankers were trained on merged candidates, not on "
                           f"{retriever}'s list; ask with \"rerank\": false to see {retriever} alone")
        max_k = f.max_k(req.retriever)
        if not 1 <= req.k <= max_k:
            raise ApiError(422, where + "k", f"k must be between 1 and {max_k}, got {req.k}")
        if req.user is not None:
            try:
                user = f.user_index(req.user)
            except KeyError:
                raise ApiError(422, where + "user", f"unknown user {str(req.user)!r}") from None
            try:
                hist = f.history_of(user, req.as_of)
            except KeyError as e:
                raise ApiError(422, where + "as_of", str(e).strip("'\"")) from None
            reqs = Requests(np.array([user], np.int64), [hist])
        else:
            unknown = [str(i) for i in req.history if str(i) not in f._item_index]
            if unknown:
                raise ApiError(422, where + "history", f"{len(unknown)} unknown item id(s): {', '.join(unknown[:20])}",
                               unknown=unknown[:100])
            reqs = Requests(np.array([-1], np.int64), [f.item_indices(list(req.history))])
        exclude_seen = f.seen["exclude"] if req.exclude_seen is None else req.exclude_seen
        key = (req.k, exclude_seen, req.explain, req.retriever, (req.reranker or True) if req.rerank else None)
        return key, reqs

    # -- one micro-batched group: blocking, runs in the batcher's worker thread
    def run_group(self, key: tuple, payloads: list[Requests]) -> list[dict[str, Any]]:
        k, exclude_seen, explain, retriever, reranker = key
        timings: dict[str, float] = {}
        recs = self.funnel.recommend(requests=Requests.concat(payloads), k=k, explain=explain, exclude_seen=exclude_seen,
                                     retriever=retriever, reranker=reranker,
                                     batch_size=max(len(payloads), 1), timings=timings)
        if self.metrics is not None:
            for stage, s in timings.items():
                self.metrics.stage_seconds.labels(stage).inc(s)
        return [self.response(r) for r in recs]

    def recommend_now(self, reqs: list[RecommendRequest]) -> list[dict[str, Any]]:
        """Unbatched: each request computed on its own (the reference micro-batching must equal)."""
        out = []
        for r in reqs:
            key, payload = self.resolve(r)
            out += self.run_group(key, [payload])
        return out

    def _history_items(self, ids: list[str]) -> list[dict[str, Any]]:
        f = self.funnel
        return [{"item_id": i, "title": f.title(f._item_index[i])} for i in ids]

    def response(self, r: UserRecommendations) -> dict[str, Any]:
        items = [{"item_id": it.item_id, "title": it.title, "score": it.score if np.isfinite(it.score) else None,
                  "sid": it.sid, "ranks": it.ranks, "explanation": it.explanation} for it in r.items]
        expl = r.explanation
        if expl is not None:
            expl = {**expl, "llm": self.funnel.record.get("llm_why") or "the funnel does not use the LLM stage"}
            if "thinking_agreement" in expl:
                expl["thinking_agreement"] = {f"level_{int(lv) + 1}": v for lv, v in expl["thinking_agreement"].items()}
        return {"user": r.user_id, "history": self._history_items(r.history), "items": items, "stages": r.stages,
                "cold_start": r.cold_start, "explanation": expl}

    # -- catalogue
    def item(self, item_id: str) -> dict[str, Any]:
        f = self.funnel
        if item_id not in f._item_index:
            raise ApiError(404, "item_id", f"unknown item {item_id!r}")
        return self._item_detail(f._item_index[item_id])

    def _item_detail(self, i: int) -> dict[str, Any]:
        f = self.funnel
        cats = self._categories[i] if self._categories is not None else None
        sid = self._sidmap.sid_strings(np.array([i]), wrap=False)[0] if self._sidmap is not None else None
        return {"item_id": f.item_ids[i], "title": f.title(i), "categories": list(cats) if cats is not None else None,
                "sid": sid, "interactions": int(self._counts[i])}

    def search(self, q: str, limit: int, offset: int) -> dict[str, Any]:
        if self._lower_titles is None:
            hits = np.zeros(0, np.int64)
        elif q:
            mask = self._lower_titles.str.contains(q.lower(), literal=True).fill_null(False).to_numpy()
            hits = np.flatnonzero(mask)
            hits = hits[np.argsort(-self._counts[hits], kind="stable")]  # most interacted first
        else:
            hits = np.argsort(-self._counts, kind="stable")
        return {"items": [self._item_detail(int(i)) for i in hits[offset: offset + limit]], "total": int(len(hits))}

    def history(self, user: str, as_of: str | None) -> dict[str, Any]:
        f = self.funnel
        try:
            u = f.user_index(user)
        except KeyError:
            raise ApiError(404, "user", f"unknown user {user!r}") from None
        try:
            hist = f.history_of(u, as_of)
        except KeyError as e:
            raise ApiError(404, "as_of", str(e).strip("'\"")) from None
        return {"user": user, "history": self._history_items([f.item_ids[i] for i in hist])}


def create_app(funnel: Funnel | str | Path, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``funnel`` (a loaded :class:`Funnel` or a run directory, loaded here, once)."""
    from thinkrec.pipeline.funnel import load

    config = check_valid(config or ServeConfig(), "serve")
    funnel = load(funnel) if isinstance(funnel, str | Path) else funnel
    if config.per_source is not None:
        apply_profile(funnel, config.per_source)
    metrics = _Metrics()
    service = FunnelService(funnel, metrics)

    def on_batch(n: int, seconds: float) -> None:
        metrics.batch_size.observe(n)
        metrics.batch_seconds.observe(seconds)

    batcher = MicroBatcher(service.run_group, config.batching, on_batch)
    metrics.queue_depth.set_function(lambda: batcher.depth)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        batcher.start()
        if config.warmup:  # first-use loading (models, featurizer) happens here, not in a client's request
            await asyncio.get_running_loop().run_in_executor(None, _warm_up, service)
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.drain(config.drain_timeout_s)

    app = FastAPI(title="thinkrec", version="1", lifespan=lifespan,
                  description=f"The trained funnel of `{funnel.root}`: Semantic-ID retrieval → re-ranking. {COLD_START}.")
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.field, exc.message, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": ["body"], "msg": "invalid request"}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return _error(422, loc, f"{loc}: {msg}", errors=[{"field": ".".join(str(x) for x in e.get("loc", ())),
                                                          "message": str(e.get("msg"))} for e in errs[:20]])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own 400 (a body that is not valid UTF-8 / JSON it can decode, or nested too deeply for it) and
        # the router's 404 / 405, in the API's error format: 400 names the body, the others the path
        field = "body" if exc.status_code == 400 else "path"
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and request.method == "POST":
            detail = f"body: {detail} (send one JSON object, UTF-8 encoded, as application/json)"
        return _error(exc.status_code, field, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        metrics.overloaded.inc()
        return _error(503, None, f"overloaded: {exc}; retry later", headers={"Retry-After": "1"})

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        request_id = request.headers.get("x-request-id") or secrets.token_hex(8)
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug, not the client's mistake: a JSON 500 with an id to find the traceback by
            log.exception("request %s %s %s failed", request_id, request.method, request.url.path)
            metrics.errors.labels(type(exc).__name__).inc()
            response = _error(500, None, f"internal error ({type(exc).__name__}); the server log has the traceback "
                              f"under request id {request_id}", request_id=request_id)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        response.headers["X-Request-ID"] = request_id
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)

    @app.post("/v1/recommend", response_model=Recommendation, summary="Recommend for one user or history")
    async def recommend(req: RecommendRequest) -> dict[str, Any]:
        key, payload = service.resolve(req)
        return await batcher.submit(key, payload)

    @app.post("/v1/recommend/batch", response_model=BatchResponse, summary="Recommend for many users in one call")
    async def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        resolved = [service.resolve(r, f"requests.{i}.") for i, r in enumerate(body.requests)]
        if batcher.depth + len(resolved) > config.batching.max_queue:
            raise Overloaded(f"{batcher.depth} requests waiting; {len(resolved)} more exceed serve.max_queue "
                             f"{config.batching.max_queue}")
        results = await asyncio.gather(*(batcher.submit(k, p) for k, p in resolved))
        return {"results": list(results)}

    @app.get("/v1/items/{item_id}", response_model=ItemDetail, summary="One item of the catalogue")
    async def item(item_id: str) -> dict[str, Any]:
        return service.item(item_id)

    @app.get("/v1/items", response_model=ItemList, summary="Search items by title (case-insensitive substring)")
    async def items(q: str = Query("", max_length=200), limit: int = Query(20, ge=1, le=200),
                    offset: int = Query(0, ge=0)) -> dict[str, Any]:
        return service.search(q, limit, offset)

    @app.get("/v1/users", response_model=UserList, summary="User ids of the run's dataset")
    async def users(limit: int = Query(20, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        ids = funnel.user_ids
        return {"users": [str(u) for u in ids[offset: offset + limit]], "total": len(ids)}

    @app.get("/v1/users/{user}/history", response_model=UserHistory, summary="A user's history (oldest first)")
    async def history(user: str, as_of: str | None = Query(None, pattern="^(test|valid)$")) -> dict[str, Any]:
        return service.history(user, as_of)

    @app.get("/v1/info", response_model=Info, summary="What this server serves")
    async def info() -> dict[str, Any]:
        rec = funnel.record
        return {"run": str(funnel.root), "dataset": str(funnel.config.data.dataset), "n_users": len(funnel.user_ids),
                "n_items": len(funnel.item_ids), "retrievers": service.retrievers, "rerankers": service.rerankers,
                "stages": {k: rec.get(k) for k in ("retriever", "reranker", "final", "sources", "llm") if k in rec},
                "max_k": funnel.max_k(), "batching": vars(config.batching), "seen": funnel.seen,
                "generation": funnel.generation}

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The funnel is loaded and warmed up")
    async def readyz() -> JSONResponse:
        ok = state["ready"]
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("thinkrec.serve").joinpath("static/index.html").read_text("utf-8"))

    return app


def apply_profile(funnel: Funnel, per_source: int) -> None:
    """Serve with every candidate source cut to its top ``per_source`` before the merge (the merged set keeps its
    size where the sources together return enough; the re-ranker is unchanged); a generative source's beam
    narrows to ``per_source`` too where it was wider."""
    from thinkrec.pipeline.scorers import SCORERS

    if per_source < 1:
        raise ValueError(f"per_source must be ≥ 1, got {per_source}")
    funnel.config.candidates.per_source = int(per_source)
    for name in funnel.record.get("sources") or []:
        if SCORERS.get(name).generative:
            scorer = funnel.scorer(name)
            scorer.beam_size = min(int(scorer.beam_size), int(per_source))


def _warm_up(service: FunnelService) -> None:
    f = service.funnel
    hist = f.history_of(0)
    service.run_group((min(10, f.max_k()), None, True, None, True), [Requests(np.array([0]), [hist])])


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          device: str | None = None, log_level: str = "info", announce: Any = None) -> None:
    """Load the run's funnel and serve it with uvicorn until SIGINT / SIGTERM (queued requests are answered).
    A start-up failure (bad port, port in use, a run directory that cannot be served) raises a
    :class:`~thinkrec.errors.UserError` before anything listens; ``announce(funnel)`` runs once it is loaded."""
    import torch
    import uvicorn

    from thinkrec.pipeline.funnel import load

    # trained weights leave denormal activations, which cost x86 several times a normal float (beam_speed.json)
    torch.set_flush_denormal(True)
    config = config or ServeConfig()
    sock = listen_socket(host, port)  # before the (slow) load: a busy port fails at once, in one line
    funnel = load(run_dir, device)
    app = create_app(funnel, config)
    if announce is not None:
        announce(funnel)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=int(config.drain_timeout_s)))
    server.run(sockets=[sock])


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; a port out of range, an unknown host or a port in use is a
    :class:`~thinkrec.errors.InvalidArgumentError` saying so (the CLI prints that line and exits 2)."""
    from thinkrec.errors import InvalidArgumentError

    if not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"--port {port}: a TCP port is 0–65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        raise InvalidArgumentError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    sock.set_inheritable(True)
    return sock
