"""The vocabulary every backend shares: a reply (`Completion`), a classified failure (`LLMError`), the
`Backend` protocol, and the per-provider defaults."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from .redact import redact

Messages = list[dict]

DEFAULT_MODELS = {
    "groq": "llama-3.3-70b-versatile",
    "openai": "",   # must be named: whatever the server serves
    "local": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
# Conservative per-provider defaults (Groq's free tier for llama-3.3-70b-versatile: 30 requests/min,
# 12k tokens/min). 0 = no limit. The limiter adapts to x-ratelimit-* headers when the server sends them.
PROVIDER_LIMITS = {
    "groq": {"rpm": 30, "tpm": 12_000, "workers": 8},
    "openai": {"rpm": 0, "tpm": 0, "workers": 8},
    "local": {"rpm": 0, "tpm": 0, "workers": 1},
}

RETRYABLE = {"rate_limit", "server", "timeout", "connection", "malformed", "empty"}
FATAL = {"auth", "not_found", "config"}   # every later request would fail the same way: stop the run
WAIT_TOO_LONG = "wait_too_long"           # a Retry-After over max_wait_s: stop sending, rerun later


@dataclass
class Completion:
    """One reply: its text, what it cost, and the failed attempts before it (kind -> count)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    model: str = ""
    latency_s: float = 0.0
    attempts: int = 1
    headers: dict = field(default_factory=dict, repr=False)
    retried: Counter = field(default_factory=Counter)
    batch_id: str | None = None       # the provider batch it came from (llm/batch.py): its tokens cost the batch price


class LLMError(Exception):
    """A failed request, classified: `kind` decides retry (RETRYABLE) or stopping the run (FATAL).
    The message is redacted when the error is made, so no key can reach a report, a cache or a notebook."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None,
                 attempts: int = 1):
        super().__init__(redact(str(message)))
        self.kind, self.status, self.retry_after, self.attempts = kind, status, retry_after, attempts
        self.retried: Counter = Counter()

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL

    @property
    def stops_run(self) -> bool:
        """No later request can succeed now: a bad key/model (fatal) or a server asking to wait too long."""
        return self.fatal or self.kind == WAIT_TOO_LONG

    def describe(self) -> str:
        status = f" HTTP {self.status}" if self.status else ""
        return f"{self.kind}{status}: {self}"


class Backend(Protocol):
    name: str
    model: str
    supports_json_mode: bool
    batch_size: int   # > 1: complete_batch is used (local models); 1: one request per call, run concurrently

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion: ...


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters a token) for the limiter before the server says the real one."""
    return max(1, len(text) // 4)


def messages_tokens(messages: Messages) -> int:
    return sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in messages)
