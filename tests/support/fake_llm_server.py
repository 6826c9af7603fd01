"""A loopback server speaking Groq's OpenAI-compatible chat API, for tests and the 03 benchmark.

It answers POST /openai/v1/chat/completions (what the real groq client calls) and /v1/chat/completions,
with Groq-style x-ratelimit-* headers. Knobs: a latency, a requests/minute limit enforced with a token
bucket (429 + Retry-After when exceeded), and a `script` of faults served to the first requests, one
dict each: {"status": 429, "retry_after": "3600"}, {"hang_s": 2}, {"raw": "<html>"}, {"choices": []},
{"content": "  "} (an empty reply), {"drip_s": 1.0} (the reply one byte a second), {"status": 400,
"echo_headers": True} (an error body that echoes the request's headers, Authorization included).
It records every request it receives. Replies are deterministic triples built from the page text; a request
from 03's judge (its system message) is answered by `judge` instead: `judge_verdicts` by default, which scores
every triple shown (support 1 when its output says UNSUPPORTED, clarity 2 when its instruction says VAGUE,
else 5).

    with FakeLLMServer(latency_s=0.1, rpm=600) as srv:
        os.environ["GROQ_BASE_URL"] = srv.url
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_reply(body: dict) -> str:
    """Three triples in the original format whose instructions quote different words of the page."""
    text = body["messages"][-1]["content"]
    m = re.search(r"Text:\s*(.*)$", text, re.DOTALL)
    words = (m.group(1) if m else text).split()
    triples = []
    for i in range(3):
        chunk = " ".join(words[i * 8: i * 8 + 8]) or f"part {i + 1}"
        triples.append(f"Triple {i + 1}:\nInstruction: Explain what the paper means by \"{chunk}\".\n"
                       f"Input: {' '.join(words[i * 8: i * 8 + 16])}\n"
                       f"Output: The passage says that {chunk.lower()}, which the authors then develop further.")
    return "\n\n".join(triples)


JUDGE_MARK = "You check instruction-tuning data"


def is_judge_request(body: dict) -> bool:
    return any(str(m.get("content", "")).startswith(JUDGE_MARK) for m in body.get("messages", [])
               if m.get("role") == "system")


def judged_triples(body: dict) -> list[dict]:
    """The triples a judge request shows ([{id, instruction, input, output}])."""
    text = body["messages"][-1]["content"]
    m = re.search(r"written from this page:\n(\[.*?\n\])\n\nFor each triple", text, re.DOTALL)
    return json.loads(m.group(1)) if m else []


def judge_verdicts(body: dict) -> str:
    """A well-formed verdict for every triple shown."""
    verdicts = []
    for t in judged_triples(body):
        bad = "UNSUPPORTED" in t["output"]
        verdicts.append({"id": t["id"], "support": 1 if bad else 5,
                         "unsupported_claim": t["output"][:60] if bad else "",
                         "clarity": 2 if "VAGUE" in t["instruction"] else 5,
                         "reason": "not in the page" if bad else "stated on the page"})
    return json.dumps({"verdicts": verdicts})


class FakeLLMServer:
    """Threaded HTTP server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self, latency_s: float = 0.0, rpm: float = 0, burst_s: float = 1.0,
                 script: list[dict] | None = None, reply: Callable[[dict], str] = default_reply,
                 tpm_header: int = 300_000, judge: Callable[[dict], str] = judge_verdicts):
        self.latency_s, self.rpm, self.burst_s = latency_s, rpm, burst_s
        self.script = deque(script or [])
        self.reply, self.judge = reply, judge
        self.tpm_header = tpm_header
        self.lock = threading.Lock()
        self.requests: list[dict] = []     # {t, path, status, model}
        self._level = max(1.0, rpm / 60 * burst_s)
        self._t = time.monotonic()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ accounting
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def count(self, status: int | None = None, judge: bool | None = None) -> int:
        """Requests received (with this status; only the judge's / only generation's)."""
        with self.lock:
            return sum(1 for r in self.requests if (status is None or r["status"] == status)
                       and (judge is None or r["judge"] == judge))

    def accepted_times(self) -> list[float]:
        with self.lock:
            return sorted(r["t"] for r in self.requests if r["status"] == 200)

    def utilisation(self) -> float:
        """Accepted requests / the most the limit allowed over the span they arrived in (bucket + refill)."""
        ts = self.accepted_times()
        if not self.rpm or len(ts) < 2:
            return float("nan")
        allowed = max(1.0, self.rpm / 60 * self.burst_s) + self.rpm / 60 * (ts[-1] - ts[0])
        return len(ts) / allowed

    def _take_token(self) -> float | None:
        """None if the request may pass, else seconds until it could (the Retry-After)."""
        if not self.rpm:
            return None
        rate, cap = self.rpm / 60, max(1.0, self.rpm / 60 * self.burst_s)
        with self.lock:
            now = time.monotonic()
            self._level = min(cap, self._level + (now - self._t) * rate)
            self._t = now
            if self._level >= 1.0:
                self._level -= 1.0
                return None
            return (1.0 - self._level) / rate

    # ------------------------------------------------------------------ server
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None,
                      ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _record(self, status: int, body: dict):
                with server.lock:
                    server.requests.append({"t": time.monotonic(), "path": self.path, "status": status,
                                            "model": body.get("model"), "judge": is_judge_request(body),
                                            "response_format": body.get("response_format")})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._record(404, body)
                    return self._send(404, b'{"error": {"message": "unknown route"}}')
                with server.lock:
                    action = server.script.popleft() if server.script else None
                if action:
                    return self._fault(action, body)
                wait = server._take_token()
                if wait is not None:
                    self._record(429, body)
                    return self._send(429, json.dumps({"error": {"message": "Rate limit reached (requests per "
                                      "minute)", "type": "requests", "code": "rate_limit_exceeded"}}).encode(),
                                      {"retry-after": f"{wait:.3f}"})
                self._record(200, body)
                if server.latency_s:
                    time.sleep(server.latency_s)
                self._send(200, json.dumps(server._completion(body)).encode(), server._ratelimit_headers())

            def _fault(self, action: dict, body: dict):
                self._record(action.get("status", 200), body)
                if action.get("hang_s"):
                    time.sleep(action["hang_s"])
                if action.get("echo_headers"):
                    sent = f"Authorization: {self.headers.get('Authorization')}; " + json.dumps(dict(self.headers))
                    err = {"error": {"message": "bad request; you sent: " + sent}}
                    return self._send(action.get("status", 400), json.dumps(err).encode())
                if action.get("drip_s"):
                    return self._drip(json.dumps(server._completion(body)).encode(), action["drip_s"])
                if "raw" in action:
                    return self._send(action.get("status", 200), action["raw"].encode())
                if action.get("status", 200) != 200:
                    headers = {"retry-after": action["retry_after"]} if "retry_after" in action else {}
                    err = {"error": {"message": action.get("message", f"fault {action['status']}")}}
                    return self._send(action["status"], json.dumps(err).encode(), headers)
                payload = server._completion(body)
                if "choices" in action:
                    payload["choices"] = action["choices"]
                if "content" in action:
                    payload["choices"][0]["message"]["content"] = action["content"]
                return self._send(200, json.dumps(payload).encode(), server._ratelimit_headers())

            def _drip(self, payload: bytes, every_s: float):
                """A 200 whose body arrives one byte every `every_s` seconds (until the client hangs up)."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    for i in range(len(payload)):
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(every_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def _ratelimit_headers(self) -> dict:
        return {"x-ratelimit-limit-requests": 14400, "x-ratelimit-remaining-requests": 14000,
                "x-ratelimit-reset-requests": "2m59.56s", "x-ratelimit-limit-tokens": self.tpm_header,
                "x-ratelimit-remaining-tokens": self.tpm_header, "x-ratelimit-reset-tokens": "0.1s"}

    def _completion(self, body: dict) -> dict:
        content = self.judge(body) if is_judge_request(body) else self.reply(body)
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(content) // 4,
                          "total_tokens": prompt + len(content) // 4}}

    def start(self) -> FakeLLMServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["FakeLLMServer", "default_reply", "judge_verdicts", "judged_triples", "is_judge_request"]
