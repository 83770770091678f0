"""The HTTP API of a trained funnel: every endpoint's happy path, each client mistake as a 4xx naming the field,
batch = single requests, micro-batched = unbatched, overload = 503 with Retry-After."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from thinkrec.serve import BatcherConfig, ServeConfig, create_app
from thinkrec.serve.schemas import RecommendRequest


@pytest.fixture(scope="module")
def client(funnel):
    # a long window so that the concurrent requests below really share batches
    app = create_app(funnel, ServeConfig(batching=BatcherConfig(window_ms=150, max_batch=64, max_queue=64)))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def users(client):
    return client.get("/v1/users", params={"limit": 40}).json()["users"]


def _items(resp):
    return [it["item_id"] for it in resp["items"]]


def _error(r, status, field):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field, err
    return err


def test_health_ready_docs_and_info(client, funnel):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/recommend/batch", "/v1/items", "/v1/items/{item_id}", "/v1/users/{user}/history"} <= set(spec["paths"])
    info = client.get("/v1/info").json()
    assert info["n_items"] == len(funnel.item_ids) and info["stages"]["retriever"] == funnel.record["retriever"]
    assert "merged" in info["retrievers"] and {"dnn", "eglr"} <= set(info["rerankers"])


def test_recommend_for_a_user_is_the_funnels_list(client, funnel, users):
    r = client.post("/v1/recommend", json={"user": users[0], "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = funnel.recommend(users=[users[0]], k=7)[0]
    assert _items(body) == [it.item_id for it in expected.items] and len(body["items"]) == 7
    assert [it["title"] for it in body["items"]] == [funnel.title(funnel._item_index[i]) for i in _items(body)]
    assert [h["item_id"] for h in body["history"]] == expected.history
    assert body["stages"]["retriever"] == funnel.record["retriever"] and body["cold_start"] is False
    if funnel.record.get("reranker"):
        assert sorted(it["ranks"]["reranker"] for it in body["items"]) == list(range(1, 8))


def test_the_served_list_follows_the_runs_seen_policy(client, funnel, users):
    seen = client.get("/v1/info").json()["seen"]
    assert seen == funnel.seen and seen["exclude"] and "repeat" in seen["why"]
    for user in users[:20]:  # the default: no item of the user's history, as in the evaluated list
        body = client.post("/v1/recommend", json={"user": user, "k": 10}).json()
        assert not {h["item_id"] for h in body["history"]} & set(_items(body))
        assert _items(body) == [it.item_id for it in funnel.recommend(users=[user], k=10, exclude_seen=True)[0].items]
    # the switch: keeping seen items gives the funnel's list under keep
    body = client.post("/v1/recommend", json={"user": users[0], "k": 10, "exclude_seen": False}).json()
    assert _items(body) == [it.item_id for it in funnel.recommend(users=[users[0]], k=10, exclude_seen=False)[0].items]


def test_history_request_equals_the_users_request(client, users):
    by_user = client.post("/v1/recommend", json={"user": users[1], "k": 5}).json()
    hist = [h["item_id"] for h in by_user["history"]]
    by_hist = client.post("/v1/recommend", json={"history": hist, "k": 5}).json()
    assert _items(by_hist) == _items(by_user) and by_hist["user"] is None


def test_stage_choice_and_explanations(client, funnel, users):
    sasrec = client.post("/v1/recommend", json={"user": users[2], "k": 5, "retriever": "sasrec", "rerank": False}).json()
    assert sasrec["stages"] == {"retriever": "sasrec", "reranker": None}
    assert _items(sasrec) == [it.item_id for it in funnel.recommend(users=[users[2]], k=5, retriever="sasrec", reranker=None)[0].items]
    assert all(set(it["ranks"]) == {"retriever"} for it in sasrec["items"])
    # S²GR's thinking tokens: per item and level the nearest cluster, its categories, whether the next code is in it
    s2gr = client.post("/v1/recommend", json={"user": users[2], "k": 4, "retriever": "s2gr", "rerank": False,
                                              "explain": True}).json()
    levels = s2gr["items"][0]["explanation"]["thinking"]
    assert levels and {"level", "cluster", "categories", "agrees"} <= set(levels[0])
    assert all(0.0 <= v <= 1.0 for v in s2gr["explanation"]["thinking_agreement"].values())
    # EGLR: entropy and reasoning steps per output position
    eglr = client.post("/v1/recommend", json={"user": users[2], "k": 4, "retriever": "merged", "reranker": "eglr",
                                              "explain": True}).json()
    rr = eglr["explanation"]["reranker_reasoning"]
    assert len(rr["entropy"]) >= 4 and all(s >= 0 for s in rr["reasoning_steps"]) and all(e >= 0 for e in rr["entropy"])
    assert eglr["stages"]["reranker"] == "eglr" and "llm" in eglr["explanation"]


def test_batch_equals_single_requests(client, users):
    reqs = [{"user": u, "k": 6} for u in users[:12]] + [{"history": [], "k": 6}, {"user": users[3], "k": 3, "rerank": False}]
    batch = client.post("/v1/recommend/batch", json={"requests": reqs})
    assert batch.status_code == 200, batch.text
    singles = [client.post("/v1/recommend", json=r).json() for r in reqs]
    assert batch.json()["results"] == singles


def test_micro_batched_answers_equal_unbatched_ones(client, users):
    app = client.app
    service, batcher = app.state.service, app.state.batcher
    reqs = [{"user": u, "k": 5, "explain": i % 3 == 0} for i, u in enumerate(users[:30])]
    before = batcher.batches
    with ThreadPoolExecutor(16) as pool:  # concurrent clients
        answers = list(pool.map(lambda r: client.post("/v1/recommend", json=r), reqs))
    assert all(a.status_code == 200 for a in answers)
    assert batcher.batches - before < len(reqs)  # some requests shared a pass
    unbatched = service.recommend_now([RecommendRequest(**r) for r in reqs])
    got = [a.json() for a in answers]
    for g, u in zip(got, unbatched, strict=True):
        assert _items(g) == [it["item_id"] for it in u["items"]]
        assert np.allclose([it["score"] for it in g["items"]], [it["score"] for it in u["items"]], atol=1e-5)
        assert json.dumps(g["explanation"], sort_keys=True) == json.dumps(
            json.loads(json.dumps(u["explanation"])), sort_keys=True) or g["explanation"] == u["explanation"]


def test_cold_start_is_served_from_popularity_and_flagged(client, funnel):
    body = client.post("/v1/recommend", json={"history": [], "k": 5}).json()
    assert body["cold_start"] is True and body["stages"]["retriever"] == "popularity"
    counts = np.bincount(funnel.dataset.sequences()[1], minlength=len(funnel.item_ids))
    top = [funnel.item_ids[i] for i in np.argsort(-counts, kind="stable")[:5]]
    assert set(_items(body)) <= set(funnel.item_ids) and len(body["items"]) == 5
    assert _items(body)[0] in top  # the most popular items lead


@pytest.mark.parametrize("body,status,field,needle", [
    ({"history": ["nope-1", "nope-2"]}, 422, "history", "nope-1"),
    ({"user": "no-such-user"}, 422, "user", "no-such-user"),
    ({"user": "USER", "k": 0}, 422, "k", "between 1"),
    ({"user": "USER", "k": 100000}, 422, "k", "between 1"),
    ({"user": "USER", "k": "ten"}, 422, "k", "integer"),
    ({"user": "USER", "history": []}, 422, "body", "exactly one"),
    ({}, 422, "body", "exactly one"),
    ({"user": "USER", "colour": "red"}, 422, "colour", "Extra"),
    ({"user": "USER", "retriever": "bm25"}, 422, "retriever", "bm25"),
    ({"user": "USER", "reranker": "xgb"}, 422, "reranker", "xgb"),
    ({"history": ["x"], "as_of": "test"}, 422, "body", "as_of"),
    ({"user": "USER", "as_of": "yesterday"}, 422, "as_of", "test"),
])
def test_bad_requests_get_4xx_naming_the_field(client, users, body, status, field, needle):
    body = {k: (users[0] if v == "USER" else v) for k, v in body.items()}
    err = _error(client.post("/v1/recommend", json=body), status, field)
    assert needle.lower() in err["message"].lower(), err


def test_unknown_items_are_listed(client, funnel):
    known = funnel.item_ids[0]
    err = _error(client.post("/v1/recommend", json={"history": [known, "bad-a", "bad-b"]}), 422, "history")
    assert err["unknown"] == ["bad-a", "bad-b"] and known not in err["message"]


def test_malformed_oversize_and_batch_errors(client, users):
    r = client.post("/v1/recommend", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "json" in r.json()["error"]["message"].lower()
    big = json.dumps({"history": ["x" * 50] * 30000}).encode()  # ≈ 1.6 MB > the 1 MB limit
    _error(client.post("/v1/recommend", content=big, headers={"Content-Type": "application/json"}), 413, "body")
    _error(client.post("/v1/recommend", json={"history": ["1"] * 2001}), 422, "history")
    _error(client.post("/v1/recommend/batch", json={"requests": []}), 422, "requests")
    err = _error(client.post("/v1/recommend/batch", json={"requests": [{"user": users[0]}, {"user": "ghost"}]}), 422,
                 "requests.1.user")
    assert "ghost" in err["message"]


def test_overload_answers_503_with_retry_after(funnel, users):
    app = create_app(funnel, ServeConfig(batching=BatcherConfig(window_ms=1, max_batch=4, max_queue=3), warmup=False))
    with TestClient(app) as c:
        r = c.post("/v1/recommend/batch", json={"requests": [{"user": u} for u in users[:5]]})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "max_queue" in r.json()["error"]["message"]
        assert c.post("/v1/recommend/batch", json={"requests": [{"user": u} for u in users[:3]]}).status_code == 200
        assert "thinkrec_overloaded_total 1.0" in c.get("/metrics").text


def test_catalogue_and_history_endpoints(client, funnel, users):
    item = funnel.item_ids[3]
    d = client.get(f"/v1/items/{item}").json()
    assert d["item_id"] == item and d["title"] == funnel.title(3) and d["sid"] and d["interactions"] >= 0
    _error(client.get("/v1/items/not-an-item"), 404, "item_id")
    word = funnel.title(3).split()[0]
    found = client.get("/v1/items", params={"q": word.upper(), "limit": 200}).json()
    assert item in [i["item_id"] for i in found["items"]] or found["total"] > 200
    assert all(word.lower() in i["title"].lower() for i in found["items"])
    _error(client.get("/v1/items", params={"limit": 0}), 422, "query.limit")
    h = client.get(f"/v1/users/{users[0]}/history").json()
    assert [x["item_id"] for x in h["history"]] == [funnel.item_ids[i] for i in funnel.history_of(funnel.user_index(users[0]))]
    _error(client.get("/v1/users/ghost/history"), 404, "user")


def test_prometheus_metrics(client, users):
    client.post("/v1/recommend", json={"user": users[0]})
    text = client.get("/metrics").text
    assert 'thinkrec_requests_total{endpoint="/v1/recommend",status="200"}' in text
    for name in ("thinkrec_request_seconds_bucket", "thinkrec_batch_size_count", "thinkrec_queue_depth",
                 'thinkrec_stage_seconds_total{stage="retrieval"}', 'thinkrec_stage_seconds_total{stage="rerank"}'):
        assert name in text, name


def test_an_internal_error_is_a_json_500_with_a_request_id_logged_and_counted(funnel, monkeypatch, caplog):
    app = create_app(funnel, ServeConfig(batching=BatcherConfig(window_ms=1, max_batch=8, max_queue=8)))
    with TestClient(app, raise_server_exceptions=False) as c:
        user = c.get("/v1/users", params={"limit": 1}).json()["users"][0]

        def broken(*args, **kwargs):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (50x24 and 9x32)")

        monkeypatch.setattr(app.state.service.funnel, "recommend", broken)
        r = c.post("/v1/recommend", json={"user": user, "k": 5}, headers={"X-Request-ID": "req-42"})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["status"] == 500 and err["request_id"] == "req-42" and "RuntimeError" in err["message"]
        assert r.headers["X-Request-ID"] == "req-42"
        assert any("req-42" in rec.getMessage() and rec.exc_info for rec in caplog.records)
        anon = c.post("/v1/recommend", json={"user": user, "k": 5})
        assert anon.status_code == 500 and len(anon.json()["error"]["request_id"]) == 16
        metrics = c.get("/metrics").text
        assert 'thinkrec_internal_errors_total{type="RuntimeError"} 2.0' in metrics
        assert 'thinkrec_requests_total{endpoint="/v1/recommend",status="500"} 2.0' in metrics


@pytest.mark.parametrize("port, says", [(99999, "a TCP port is 0–65535"), (None, "Address already in use")])
def test_serve_start_up_failures_are_one_line_and_exit_2(served_run, port, says):
    import socket
    import subprocess
    import sys

    busy = None
    if port is None:  # a port another process listens on
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "thinkrec.cli", "serve", "--run", str(served_run), "--port",
                               str(port)], capture_output=True, text=True, timeout=120)
    finally:
        if busy is not None:
            busy.close()
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stdout + proc.stderr
