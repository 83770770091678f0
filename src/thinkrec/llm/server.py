"""A minimal OpenAI-compatible chat server backed by a local Hugging Face model.

It exists so the teacher path that production uses (an OpenAI-compatible endpoint such as vLLM) runs for real here:
tests start it on a free port with a tiny model; ``thinkrec serve-teacher`` starts it for any local model. Like vLLM's
guided decoding, answers to prompts that list candidates are constrained to the ranking format. Endpoints:
``GET /v1/models`` and ``POST /v1/chat/completions`` (``messages``, ``n``, ``temperature``, ``max_tokens``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from thinkrec.llm.answer import AnswerTokens, prompt_candidates
from thinkrec.llm.teacher import generate_answers

GenerateFn = Callable[[str, int, float], list[str]]


def hf_backend(model: Any, tokenizer: Any, max_reasoning_tokens: int = 64) -> GenerateFn:
    """``(prompt, n, temperature) -> n answers`` from a local model under the ranking constraint."""
    tokens = AnswerTokens(tokenizer)
    lock = threading.Lock()  # one generation at a time: the model is not re-entrant

    def generate(prompt: str, n: int, temperature: float) -> list[str]:
        cands = prompt_candidates(prompt)
        with lock:
            return generate_answers(model, tokens, [prompt], n, temperature, max_reasoning_tokens,
                                    max(len(cands), 1), len(cands[0]) if cands else 4)[0]

    return generate


def flatten_messages(messages: list[dict[str, str]]) -> str:
    """Completion-style prompt from chat messages (base models have no chat template): the user turn last."""
    system = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [m["content"] for m in messages if m.get("role") != "system"]
    return "\n\n".join(system + rest)


class OpenAICompatibleServer:
    """``with OpenAICompatibleServer(backend, "teacher") as srv: srv.base_url`` — serves on 127.0.0.1, port 0 = any."""

    def __init__(self, backend: GenerateFn, model_name: str, host: str = "127.0.0.1", port: int = 0):
        self.backend, self.model_name = backend, model_name
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    prompt = flatten_messages(req["messages"])
                    n, temperature = int(req.get("n", 1)), float(req.get("temperature", 1.0))
                except (ValueError, KeyError, TypeError) as e:
                    self._send(400, {"error": {"message": f"bad request: {e}"}})
                    return
                texts = server.backend(prompt, n, temperature)
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                    "model": server.model_name,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                                for i, t in enumerate(texts)],
                })

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OpenAICompatibleServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> OpenAICompatibleServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
