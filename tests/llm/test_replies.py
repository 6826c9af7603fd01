"""Issue 27 items 6 and 9: every reply shape is checked (an odd one is the retryable "malformed" error, never a
crash), a 200 {"error": ...} body's message is shown, and a reply is read under a size cap (nbutils/llm/)."""
from __future__ import annotations

import gzip
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nbutils.llm.base import LLMError
from nbutils.llm.remote import GroqBackend, OpenAICompatBackend
from nbutils.llm.retries import RetryPolicy, complete_with_retries

GOOD = {"choices": [{"message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "model": "m"}


class ReplyServer:
    """Answers POSTs (any path) with the queued (status, headers, body) replies, then GOOD."""

    def __init__(self, *replies):
        self.replies = deque(replies)
        self.count = 0

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.count += 1
                status, headers, body = server.replies.popleft() if server.replies else (200, {}, GOOD)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def shaped(**change):
    body = json.loads(json.dumps(GOOD))
    for path, value in change.items():
        *parents, last = path.split("__")
        node = body
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return body


ODD_BODIES = {
    "message a string": shaped(choices__0__message="hello"),
    "usage a list": shaped(usage=[1, 2]),
    "prompt_tokens many": shaped(usage__prompt_tokens="many"),
    "choices a dict": shaped(choices={"0": {"message": {"content": "x"}}}),
    "content a number": shaped(choices__0__message__content=12),
    "body a list": [1, 2, 3],
}


def backends(url, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_not_a_real_key_000")
    return [OpenAICompatBackend(model="m", base_url=url, timeout_s=10),
            GroqBackend(model="m", base_url=url.removesuffix("/v1"), timeout_s=10)]


@pytest.mark.parametrize("what", list(ODD_BODIES))
def test_an_odd_reply_shape_is_malformed_and_retried(what, monkeypatch):
    for i in range(2):
        with ReplyServer((200, {}, ODD_BODIES[what])) as srv:
            backend = backends(srv.url, monkeypatch)[i]
            done = complete_with_retries(backend, [{"role": "user", "content": "q"}], sleep=lambda s: None,
                                         policy=RetryPolicy(max_attempts=3))
            assert done.text == "fine" and done.retried == {"malformed": 1}, backend.name


def test_broken_gzip_is_malformed(monkeypatch):
    for i in range(2):
        with ReplyServer((200, {"Content-Encoding": "gzip"}, gzip.compress(json.dumps(GOOD).encode())[:-12])) as srv:
            with pytest.raises(LLMError) as e:
                backends(srv.url, monkeypatch)[i].complete([{"role": "user", "content": "q"}])
            assert e.value.kind == "malformed"


def test_a_200_error_body_shows_the_servers_message(monkeypatch):
    body = {"error": {"message": "the backend GPU fell over", "type": "internal"}}
    for i in range(2):
        with ReplyServer((200, {}, body)) as srv:
            with pytest.raises(LLMError) as e:
                backends(srv.url, monkeypatch)[i].complete([{"role": "user", "content": "q"}])
            assert "the backend GPU fell over" in str(e.value) and e.value.retryable


@pytest.mark.parametrize("code,kind", [("model_not_found", "not_found"), ("invalid_api_key", "auth")])
def test_a_200_error_body_of_a_bad_model_or_key_stops_the_run(monkeypatch, code, kind):
    body = {"error": {"message": f"nope ({code})", "code": code}}
    with ReplyServer((200, {}, body)) as srv:
        with pytest.raises(LLMError) as e:
            backends(srv.url, monkeypatch)[0].complete([{"role": "user", "content": "q"}])
    assert e.value.kind == kind and e.value.fatal


def test_a_compressed_bomb_is_cut_at_the_cap_quickly(monkeypatch):
    bomb = gzip.compress(b'{"choices": [{"message": {"content": "' + b"a" * 50_000_000 + b'"}}]}', 9)
    assert len(bomb) < 100_000
    for i in range(2):
        with ReplyServer((200, {"Content-Encoding": "gzip"}, bomb)) as srv:
            t0 = time.monotonic()
            with pytest.raises(LLMError) as e:
                backends(srv.url, monkeypatch)[i].complete([{"role": "user", "content": "q"}])
            assert e.value.kind == "malformed" and "MiB" in str(e.value)
            assert time.monotonic() - t0 < 5


def test_a_normal_gzip_reply_still_reads(monkeypatch):
    for i in range(2):
        with ReplyServer((200, {"Content-Encoding": "gzip"}, gzip.compress(json.dumps(GOOD).encode()))) as srv:
            assert backends(srv.url, monkeypatch)[i].complete([{"role": "user", "content": "q"}]).text == "fine"
