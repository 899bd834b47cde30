"""RemoteEngine against a real HTTP server in the test process that plays an OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import CancelToken, CompletionRequest
from repocomplete.model_runtime.errors import RemoteError
from repocomplete.model_runtime.remote import RemoteEngine, base_url, guess_template
from repocomplete.model_runtime.templates import PromptParts

QWEN_STOP = ["<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>", "<|im_end|>"]


def sse(*texts, finish="stop", delay=0.0, pause=0.0, usage=None):
    """A streamed answer: one chunk per text, `delay` seconds apart, after `pause` seconds."""
    return {"kind": "sse", "texts": texts, "finish": finish, "delay": delay, "pause": pause, "usage": usage}


class FakeEndpoint:
    """Answers POST /v1/completions with `replies` in turn (the last one repeats) and GET /v1/models."""

    def __init__(self):
        self.replies: list = [sse("ok")]
        self.models = ["test-model"]
        self.received: list[tuple[str, str, dict | None]] = []
        self.streams: list[dict] = []  # per streamed answer: chunks sent, and whether the client hung up
        self.first_chunk_sent = threading.Event()
        self.stream_ended = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def posts(self) -> list[dict]:
        return [body for method, _, body in self.received if method == "POST"]

    def next_reply(self, body: dict) -> dict:
        with self.lock:
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return reply(body) if callable(reply) else reply

    def close(self):
        self.stopping.set()  # wakes handlers that sleep
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: str, content_type: str = "application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        fake = self.server.fake
        fake.received.append(("GET", self.path, None))
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]}))
        else:
            self._send(404, '{"error": "not found"}')

    def do_POST(self):
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.received.append(("POST", self.path, body))
        if self.path != "/v1/completions":
            self._send(404, '{"error": "not found"}')
            return
        reply = fake.next_reply(body)
        with fake.lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            self._reply(fake, reply)
        finally:
            with fake.lock:
                fake.in_flight -= 1

    def _reply(self, fake, reply):
        kind = reply["kind"]
        if kind == "status":
            self._send(reply["status"], reply["body"], "text/plain")
        elif kind == "sleep":
            fake.stopping.wait(reply["seconds"])
        elif kind == "json":
            self._send(200, json.dumps(reply["body"]))
        elif kind == "raw_sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(reply["data"].encode())
        elif kind == "sse":
            fake.stopping.wait(reply["pause"])
            texts = reply["texts"]
            events = [
                {"id": "c", "object": "text_completion", "choices": [
                    {"index": 0, "text": t, "finish_reason": reply["finish"] if i == len(texts) - 1 else None}
                ]}
                for i, t in enumerate(texts)
            ]
            if reply["usage"] is not None:
                events.append({"id": "c", "object": "text_completion", "choices": [], "usage": reply["usage"]})
            log = {"sent": 0, "aborted": False, "total": len(events)}
            fake.streams.append(log)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                for i, event in enumerate(events):
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    log["sent"] += 1
                    if i == 0:
                        fake.first_chunk_sent.set()
                    if reply["delay"]:
                        fake.stopping.wait(reply["delay"])
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                log["aborted"] = True  # the client closed the stream: a real server stops generating here
            finally:
                fake.stream_ended.set()


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeEndpoint()
    yield fake
    fake.close()


@pytest.fixture
def make_engine(server):
    engines = []

    def make(**changes) -> RemoteEngine:
        settings = {"endpoint": server.url, "endpoint_model": "Qwen2.5-Coder-1.5B", "endpoint_retries": 0}
        settings.update(changes)
        engine = RemoteEngine(RuntimeConfig(**settings))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def request(prefix: str, suffix: str = "", **kwargs) -> CompletionRequest:
    return CompletionRequest(PromptParts(prefix, suffix), **kwargs)


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Qwen/Qwen2.5-Coder-7B-Instruct", "qwen2.5-coder"),
        ("qwen2.5-coder:1.5b-base", "qwen2.5-coder"),
        ("Qwen/Qwen2.5-7B-Instruct", "plain"),
        ("bigcode/starcoder2-15b", "starcoder"),
        ("deepseek-ai/deepseek-coder-6.7b-base", "deepseek-coder"),
        ("/models/CodeLlama-13b-hf", "codellama"),
        ("google/codegemma-7b", "codegemma"),
        ("HuggingFaceTB/SmolLM2-135M", "plain"),
    ],
)
def test_guess_template(name, expected):
    assert guess_template(name).name == expected


@pytest.mark.parametrize("endpoint", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"])
def test_base_url(endpoint):
    assert base_url(endpoint) == "http://h:8000/v1"


def test_streamed_completion_sends_rendered_prompt_and_stops(server, make_engine):
    server.replies = [sse("a", " +", " b")]
    engine = make_engine(endpoint=server.url + "/v1/", max_new_tokens=17, multiline=True)
    parts = PromptParts("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n")
    result = engine.complete(CompletionRequest(parts))
    assert (result.text, result.stop_reason, result.raw_text) == ("a + b", "eos", "a + b")
    assert engine.template.name == "qwen2.5-coder" and engine.order == "psm"
    [body] = server.posts()
    assert body["prompt"] == (
        "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    )
    assert body["stop"] == QWEN_STOP
    assert (body["model"], body["max_tokens"], body["temperature"], body["stream"]) == (
        "Qwen2.5-Coder-1.5B", 17, 0.0, True,
    )
    assert [m for m, _, _ in server.received] == ["POST"]  # the model was configured: /v1/models not asked


def test_model_and_template_from_models_endpoint(server, make_engine):
    server.models = ["bigcode/starcoder2-3b", "other"]
    server.replies = [sse("1")]
    engine = make_engine(endpoint_model=None)
    engine.complete(request("x = ", "\ny = 2\n"))
    engine.complete(request("x = ", "\ny = 2\n"))
    assert engine.name == "bigcode/starcoder2-3b"
    assert (engine.template.name, engine.order) == ("starcoder", "spm")
    assert [(m, p) for m, p, _ in server.received] == [
        ("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/completions"),
    ]
    body = server.posts()[0]
    assert body["model"] == "bigcode/starcoder2-3b"
    assert body["prompt"] == "<fim_prefix><fim_suffix>\ny = 2\n<fim_middle>x = "


def test_left_to_right_template_does_not_send_suffix(server, make_engine):
    server.replies = [sse("1")]
    engine = make_engine(fim_template="plain")
    engine.complete(request("x = ", "\ny = 2\n"))
    assert server.posts()[0]["prompt"] == "x = "


def test_single_line_cut_at_newline_closes_early(server, make_engine):
    server.replies = [sse("foo(", ")\nba", "r", "\nmore", "\nand more")]
    result = make_engine(multiline=False).complete(request("x = "))
    assert (result.text, result.stop_reason) == ("foo()", "newline")
    assert result.raw_text == "foo()\nba"  # stopped reading at the chunk that held the newline


def test_suffix_overlap_trimmed(server, make_engine):
    server.replies = [sse("x", ")")]
    result = make_engine().complete(request("print(", ")"))
    assert (result.text, result.raw_text) == ("x", "x)")


def test_non_streaming_json_answer(server, make_engine):
    server.replies = [{"kind": "json", "body": {
        "choices": [{"index": 0, "text": "a + b", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }}]
    result = make_engine().complete(request("return "))
    assert (result.text, result.stop_reason, result.prompt_tokens, result.generated_tokens) == (
        "a + b", "max_tokens", 7, 3,
    )


def test_usage_and_cached_tokens(server, make_engine):
    usage = {"prompt_tokens": 42, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 32}}
    server.replies = [sse("a", "b", "c", finish="length", usage=usage)]
    result = make_engine().complete(request("s = "))
    assert (result.text, result.stop_reason) == ("abc", "max_tokens")
    assert (result.prompt_tokens, result.cached_tokens, result.generated_tokens) == (42, 32, 3)
    assert server.posts()[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("status", [500, 429])
def test_retry_after_server_error(server, make_engine, status):
    server.replies = [{"kind": "status", "status": status, "body": "busy"}, sse("ok")]
    result = make_engine(endpoint_retries=2).complete(request("x = "))
    assert result.text == "ok"
    assert len(server.posts()) == 2


def test_retries_exhausted(server, make_engine):
    server.replies = [{"kind": "status", "status": 503, "body": "overloaded"}]
    with pytest.raises(RemoteError, match=r"HTTP 503: overloaded \(after 2 attempts\)"):
        make_engine(endpoint_retries=1).complete(request("x = "))
    assert len(server.posts()) == 2


def test_no_retry_on_400(server, make_engine):
    server.replies = [{"kind": "status", "status": 400, "body": "prompt too long " + "x" * 500}, sse("ok")]
    with pytest.raises(RemoteError) as info:
        make_engine(endpoint_retries=2).complete(request("x = "))
    message = str(info.value)
    assert "HTTP 400: prompt too long" in message and server.url + "/v1/completions" in message
    assert "\n" not in message and len(message) < 300
    assert len(server.posts()) == 1


def test_timeout(server, make_engine):
    server.replies = [{"kind": "sleep", "seconds": 3.0}]
    engine = make_engine(endpoint_timeout_s=0.3)
    t0 = time.perf_counter()
    with pytest.raises(RemoteError, match=r"timeout after 0\.3 s"):
        engine.complete(request("x = "))
    assert time.perf_counter() - t0 < 1.5


def test_connection_refused(make_engine):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = make_engine(endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteError, match=rf"127\.0\.0\.1:{port}/v1/completions: connection refused"):
        engine.complete(request("x = "))


def test_malformed_sse(server, make_engine):
    server.replies = [{"kind": "raw_sse", "data": "data: {not json\n\n"}]
    with pytest.raises(RemoteError, match="malformed JSON/SSE data: {not json"):
        make_engine(endpoint_retries=2).complete(request("x = "))
    assert len(server.posts()) == 1


def test_cancel_mid_stream_closes_server_stream(server, make_engine):
    server.replies = [sse(*["a"] * 30, delay=0.1)]
    token = CancelToken()

    def cancel_after_first_chunk():
        server.first_chunk_sent.wait(5)
        time.sleep(0.05)
        token.cancel()

    threading.Thread(target=cancel_after_first_chunk, daemon=True).start()
    t0 = time.perf_counter()
    result = make_engine(multiline=True).complete(request("x = ", cancel=token))
    assert (result.text, result.stop_reason) == ("", "cancelled")
    assert time.perf_counter() - t0 < 1.0
    assert server.stream_ended.wait(2.0)
    [log] = server.streams
    assert log["aborted"] and 1 <= log["sent"] < 10


def test_cancelled_before_start_sends_nothing(server, make_engine):
    token = CancelToken()
    token.cancel()
    result = make_engine().complete(request("x = ", cancel=token))
    assert (result.text, result.stop_reason) == ("", "cancelled")
    assert server.received == []


def test_time_budget(server, make_engine):
    server.replies = [sse(*["a"] * 30, delay=0.1)]
    t0 = time.perf_counter()
    result = make_engine(time_budget_s=0.25, multiline=True).complete(request("x = "))
    assert result.stop_reason == "time"
    assert 2 <= len(result.text) <= 5 and set(result.text) == {"a"}
    assert time.perf_counter() - t0 < 1.0


def test_complete_batch_keeps_input_order(server, make_engine):
    # Later prompts answer sooner, so completion order is the reverse of input order.
    server.replies = [lambda body: sse(f"<{body['prompt']}>", pause=0.05 * (5 - int(body["prompt"][1])))]
    engine = make_engine(fim_template="plain")
    results = engine.complete_batch([request(f"p{i}") for i in range(5)])
    assert [r.text for r in results] == [f"<p{i}>" for i in range(5)]
    assert server.max_in_flight >= 2
