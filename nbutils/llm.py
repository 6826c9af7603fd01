"""Chat-completion backends behind one interface, a requests/tokens-per-minute limiter and retries.

Used by 03_generate (triples) and usable by 05_evaluate (LLM-as-judge):

    backend = make_backend("groq")                    # or "openai" (+ base_url, model) or "local"
    done = complete_many(backend, [messages, ...], max_tokens=256)   # list of Completion | LLMError

Backends: `groq` (the real groq client, key from GROQ_API_KEY, GROQ_BASE_URL honoured), `openai` (any
OpenAI-compatible server: vLLM, Ollama, llama.cpp; httpx POST {base_url}/chat/completions, optional key
from OPENAI_API_KEY), `local` (a transformers causal LM via nbutils.models, batched greedy/sampled
generation). Retries are owned here (the groq client's own retries are switched off): exponential backoff
with jitter on 429 / 5xx / timeouts / malformed or empty replies, honouring Retry-After.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

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


@dataclass
class Completion:
    """One reply: its text and what it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    model: str = ""
    latency_s: float = 0.0
    attempts: int = 1
    headers: dict = field(default_factory=dict, repr=False)


class LLMError(Exception):
    """A failed request, classified: `kind` decides retry (RETRYABLE) or stopping the run (FATAL)."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None,
                 attempts: int = 1):
        super().__init__(message)
        self.kind, self.status, self.retry_after, self.attempts = kind, status, retry_after, attempts

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL

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


# ------------------------------------------------------------------------------------ header parsing
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Groq/OpenAI reset durations ("7.66s", "2m59.56s", "1h2m", "450ms", "12") -> seconds."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from retry-after-ms / retry-after (number; an HTTP date is treated as unknown)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        return None


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters a token) for the limiter before the server says the real one."""
    return max(1, len(text) // 4)


def messages_tokens(messages: Messages) -> int:
    return sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in messages)


# ------------------------------------------------------------------------------------ rate limiter
class RateLimiter:
    """Token buckets for requests/minute and tokens/minute, shared by all worker threads.

    Each bucket refills continuously and holds at most `burst_s` seconds of allowance (at least one
    request). A request may take the token bucket into debt (a big page still goes through), later
    requests wait for it to refill. `pause(seconds)` (a 429's Retry-After) holds everybody back, and
    `observe_headers` syncs with the server's x-ratelimit-* view. `headroom` < 1 runs slightly under the
    configured rate so clock jitter does not turn into 429s. 0 = unlimited."""

    def __init__(self, rpm: float = 0, tpm: float = 0, burst_s: float = 1.0, headroom: float = 0.98,
                 rpm_from_headers: bool = False, clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm, self.burst_s, self.headroom = float(rpm), float(tpm), burst_s, headroom
        self.rpm_from_headers = rpm_from_headers   # OpenAI's limit-requests is per minute; Groq's per day
        self.clock = clock
        self._cond = threading.Condition()
        self._t = clock()
        self._req = self._req_capacity()
        self._tok = self._tok_capacity()
        self._paused_until = 0.0
        self.waited_s = 0.0

    def _req_rate(self) -> float:
        return self.rpm * self.headroom / 60.0

    def _tok_rate(self) -> float:
        return self.tpm * self.headroom / 60.0

    def _req_capacity(self) -> float:
        return max(1.0, self._req_rate() * self.burst_s)

    def _tok_capacity(self) -> float:
        return max(1.0, self._tok_rate() * self.burst_s)

    def _refill(self, now: float) -> None:
        dt = max(0.0, now - self._t)
        self._t = now
        if self.rpm:
            self._req = min(self._req_capacity(), self._req + dt * self._req_rate())
        if self.tpm:
            self._tok = min(self._tok_capacity(), self._tok + dt * self._tok_rate())

    def _wait_needed(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        if self.rpm and self._req < 1.0:
            return (1.0 - self._req) / self._req_rate()
        if self.tpm and self._tok <= 0:
            return (1.0 - self._tok) / self._tok_rate()
        return 0.0

    def acquire(self, tokens: int = 0, sleep: Callable[[float], None] | None = None) -> float:
        """Block until one request of about `tokens` tokens may go; returns the seconds waited."""
        t0 = self.clock()
        with self._cond:
            while True:
                now = self.clock()
                self._refill(now)
                need = self._wait_needed(now)
                if need <= 0:
                    if self.rpm:
                        self._req -= 1.0
                    if self.tpm:
                        self._tok -= tokens
                    waited = self.clock() - t0
                    self.waited_s += waited
                    return waited
                if sleep is not None:   # tests drive a fake clock
                    self._cond.release()
                    try:
                        sleep(need)
                    finally:
                        self._cond.acquire()
                else:
                    self._cond.wait(timeout=need)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the server reported the real usage."""
        if self.tpm and actual:
            with self._cond:
                self._tok -= actual - estimated

    def pause(self, seconds: float) -> None:
        with self._cond:
            self._paused_until = max(self._paused_until, self.clock() + max(0.0, seconds))
            self._cond.notify_all()

    def observe_headers(self, headers: Any) -> None:
        """Adopt the server's limits and remaining budget (x-ratelimit-limit/remaining/reset-tokens|requests)."""
        if not headers:
            return
        get = headers.get
        with self._cond:
            now = self.clock()
            self._refill(now)
            lim_tok = _num(get("x-ratelimit-limit-tokens"))
            if lim_tok:
                self.tpm = lim_tok
            lim_req = _num(get("x-ratelimit-limit-requests"))
            if lim_req and self.rpm_from_headers:
                self.rpm = lim_req
            rem_tok = _num(get("x-ratelimit-remaining-tokens"))
            if rem_tok is not None and self.tpm:
                self._tok = min(self._tok, rem_tok)
            rem_req = _num(get("x-ratelimit-remaining-requests"))
            if rem_req is not None and rem_req <= 0:
                reset = parse_duration(get("x-ratelimit-reset-requests"))
                if reset:
                    self._paused_until = max(self._paused_until, now + reset)


def _num(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------ retries
@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins when it says longer."""

    max_attempts: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.5      # delay * uniform(1 - jitter, 1 + jitter)

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        rng = rng or random
        backoff = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        backoff *= rng.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            return max(retry_after, 0.0) + rng.uniform(0, 0.1 * max(retry_after, 0.1))
        return backoff


def complete_with_retries(backend: Backend, messages: Messages, *, limiter: RateLimiter | None = None,
                          policy: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                          **params: Any) -> Completion:
    """One request, retried on transient failures; raises the last LLMError when it fails for good."""
    policy = policy or RetryPolicy()
    est = messages_tokens(messages) + int(params.get("max_tokens", 0))
    attempt = 0
    while True:
        attempt += 1
        if limiter is not None:
            limiter.acquire(est)
        try:
            done = backend.complete(messages, **params)
        except LLMError as e:
            e.attempts = attempt
            if e.kind == "rate_limit" and limiter is not None and e.retry_after:
                limiter.pause(e.retry_after)
            if not e.retryable or attempt >= policy.max_attempts:
                raise
            sleep(policy.delay(attempt, e.retry_after))
            continue
        done.attempts = attempt
        if limiter is not None:
            limiter.settle(est, done.prompt_tokens + done.completion_tokens)
            limiter.observe_headers(done.headers)
        return done


def iter_completions(backend: Backend, jobs: Iterable[tuple[Any, Messages]], *, workers: int = 8,
                     limiter: RateLimiter | None = None, policy: RetryPolicy | None = None,
                     **params: Any) -> Iterator[tuple[Any, Completion | LLMError]]:
    """Yield (key, Completion or LLMError) as requests finish. Remote backends run `workers` requests at
    once under the limiter; batching backends (local models) run `batch_size` prompts per forward pass.
    A FATAL error (bad key, unknown model) is raised after in-flight requests settle."""
    if getattr(backend, "batch_size", 1) > 1:
        yield from _iter_batched(backend, jobs, **params)
        return
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llm") as pool:
        # everything is queued at once so workers never wait on the consumer (which fsyncs each reply)
        running = {pool.submit(complete_with_retries, backend, messages, limiter=limiter, policy=policy,
                               **params): key for key, messages in jobs}
        fatal: LLMError | None = None
        try:
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    key = running.pop(fut)
                    if fut.cancelled():
                        continue
                    try:
                        result: Completion | LLMError = fut.result()
                    except LLMError as e:
                        result = e
                        if e.fatal and fatal is None:
                            fatal = e
                            for other in running:     # stop what has not started; in-flight ones settle
                                other.cancel()
                    yield key, result
        finally:
            for other in running:
                other.cancel()
        if fatal is not None:
            raise fatal


def _iter_batched(backend, jobs, **params) -> Iterator[tuple[Any, Completion | LLMError]]:
    batch: list = []
    for job in jobs:
        batch.append(job)
        if len(batch) >= backend.batch_size:
            yield from _run_batch(backend, batch, **params)
            batch = []
    if batch:
        yield from _run_batch(backend, batch, **params)


def _run_batch(backend, batch, **params):
    try:
        results = backend.complete_batch([m for _, m in batch], **params)
    except LLMError as e:
        results = [e] * len(batch)
    except Exception as e:  # noqa: BLE001 — a broken batch is recorded per page, the run goes on
        results = [LLMError("local", f"{type(e).__name__}: {e}")] * len(batch)
    for (key, _), r in zip(batch, results):
        yield key, r


def complete_many(backend: Backend, conversations: list[Messages], **kwargs: Any) -> list[Completion | LLMError]:
    """Every conversation's reply (or its LLMError), in input order. kwargs as in iter_completions."""
    out: list = [None] * len(conversations)
    for i, result in iter_completions(backend, enumerate(conversations), **kwargs):
        out[i] = result
    return out


# ------------------------------------------------------------------------------------ backends
def _classify_status(status: int, message: str, retry_after: float | None) -> LLMError:
    if status == 429:
        return LLMError("rate_limit", message, status, retry_after)
    if status >= 500:
        return LLMError("server", message, status, retry_after)
    if status in (401, 403):
        return LLMError("auth", message, status)
    if status == 404:
        return LLMError("not_found", message, status)
    if status == 408:
        return LLMError("timeout", message, status, retry_after)
    return LLMError("bad_request", message, status)


def _request_body(model: str, messages: Messages, max_tokens: int, temperature: float, json_mode: bool) -> dict:
    body: dict = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _completion_from_dict(data: Any, model: str, latency: float, headers: dict) -> Completion:
    """Validate an OpenAI-shaped chat.completion body (dict) into a Completion, or raise LLMError."""
    if not isinstance(data, dict):
        raise LLMError("malformed", f"reply body is not a JSON object: {str(data)[:120]!r}")
    choices = data.get("choices")
    if not choices:
        raise LLMError("empty", "reply has no choices")
    first = choices[0] if isinstance(choices[0], dict) else {}
    text = (first.get("message") or {}).get("content")
    if not isinstance(text, str):
        raise LLMError("empty", "reply's first choice has no message content")
    usage = data.get("usage") or {}
    return Completion(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0),
                      finish_reason=first.get("finish_reason"), model=data.get("model") or model,
                      latency_s=latency, headers=headers)


class GroqBackend:
    """The real `groq` client. Key from GROQ_API_KEY; base_url (else GROQ_BASE_URL, else Groq's API)."""

    name = "groq"
    supports_json_mode = True
    batch_size = 1

    def __init__(self, model: str | None = None, base_url: str | None = None, timeout_s: float = 60.0):
        import groq

        key = os.environ.get("GROQ_API_KEY")
        if not key:
            raise LLMError("config", "backend 'groq' needs the environment variable GROQ_API_KEY (a key from "
                                     "console.groq.com); it is never a parameter")
        self.model = model or DEFAULT_MODELS["groq"]
        self._groq = groq
        # max_retries=0: complete_with_retries owns retries (and the limiter sees every attempt)
        self.client = groq.Groq(api_key=key, base_url=base_url or None, max_retries=0, timeout=timeout_s)

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion:
        g = self._groq
        body = _request_body(self.model, messages, max_tokens, temperature, json_mode)
        t0 = time.monotonic()
        try:
            raw = self.client.chat.completions.with_raw_response.create(**body)
            headers = dict(raw.headers)
            parsed = raw.parse()
        except g.APITimeoutError as e:
            raise LLMError("timeout", f"no reply within the timeout ({e})") from e
        except g.APIConnectionError as e:
            raise LLMError("connection", str(e)) from e
        except g.APIStatusError as e:
            raise _classify_status(e.status_code, _short(e.message), parse_retry_after(e.response.headers)) from e
        except (ValueError, g.APIResponseValidationError) as e:   # JSONDecodeError is a ValueError
            raise LLMError("malformed", f"reply body is not valid JSON ({e})") from e
        latency = time.monotonic() - t0
        data = parsed.model_dump() if hasattr(parsed, "model_dump") else parsed
        return _completion_from_dict(data, self.model, latency, headers)


class OpenAICompatBackend:
    """Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio): httpx POST {base_url}/chat/completions.
    Key (optional) from OPENAI_API_KEY."""

    name = "openai"
    supports_json_mode = True
    batch_size = 1

    def __init__(self, model: str | None = None, base_url: str | None = None, timeout_s: float = 60.0):
        import httpx

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise LLMError("config", "backend 'openai' needs base_url (e.g. http://localhost:8000/v1 for vLLM, "
                                     "http://localhost:11434/v1 for Ollama)")
        if not model:
            raise LLMError("config", "backend 'openai' needs model: the name the server serves")
        self.model, self.base_url = model, base_url.rstrip("/")
        key = os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion:
        hx = self._httpx
        body = _request_body(self.model, messages, max_tokens, temperature, json_mode)
        t0 = time.monotonic()
        try:
            r = self.client.post(f"{self.base_url}/chat/completions", json=body)
        except hx.TimeoutException as e:
            raise LLMError("timeout", f"no reply within the timeout ({e})") from e
        except hx.TransportError as e:
            raise LLMError("connection", str(e)) from e
        headers = dict(r.headers)
        if r.status_code >= 400:
            raise _classify_status(r.status_code, _short(r.text), parse_retry_after(r.headers))
        try:
            data = r.json()
        except ValueError as e:
            raise LLMError("malformed", f"reply body is not valid JSON ({e})") from e
        return _completion_from_dict(data, self.model, time.monotonic() - t0, headers)


class LocalBackend:
    """A transformers causal LM on this machine (the demo's embedded SmolLM2 by default), batched:
    left-padded prompts sorted by length, one `generate` per batch. `reply_prefix` is appended after the
    chat template's assistant header (steering a small model into the format) and put back on the reply."""

    name = "local"
    supports_json_mode = False

    def __init__(self, model: str | None = None, data_dir: str = "data", batch_size: int = 8,
                 reply_prefix: str = "", repetition_penalty: float = 1.0, threads: int | None = None):
        import torch

        from .models import load_causal_lm, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model = model or DEFAULT_MODELS["local"]
        self.batch_size, self.reply_prefix, self.repetition_penalty = batch_size, reply_prefix, repetition_penalty
        self.tokenizer = load_tokenizer(self.model, data_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = load_causal_lm(self.model, data_dir)
        self.lm.eval()

    def _prompt(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
            + self.reply_prefix

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion:
        return self.complete_batch([messages], max_tokens=max_tokens, temperature=temperature,
                                   json_mode=json_mode)[0]

    def complete_batch(self, conversations: list[Messages], *, max_tokens: int = 512, temperature: float = 0.0,
                       json_mode: bool = False) -> list[Completion]:
        import torch

        if json_mode:
            raise LLMError("config", "backend 'local' has no JSON mode; use json_mode=False")
        prompts = [self._prompt(m) for m in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        enc = self.tokenizer([prompts[i] for i in order], return_tensors="pt", padding=True,
                             add_special_tokens=False)
        gen_kwargs: dict = {"max_new_tokens": max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                            "repetition_penalty": self.repetition_penalty}
        if temperature and temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        t0 = time.monotonic()
        with torch.inference_mode():
            out = self.lm.generate(**enc, **gen_kwargs)
        latency = time.monotonic() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        results: list = [None] * len(prompts)
        for row, i in enumerate(order):
            ids = new[row].tolist()
            n = next((k for k, t in enumerate(ids) if t in eos), len(ids))
            text = self.reply_prefix + self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            results[i] = Completion(text=text, prompt_tokens=int(enc["attention_mask"][row].sum()),
                                    completion_tokens=n, finish_reason="stop" if n < len(ids) else "length",
                                    model=self.model, latency_s=latency / len(prompts))
        return results


def _short(text: Any, n: int = 300) -> str:
    s = text if isinstance(text, str) else json.dumps(text, default=str)
    return s if len(s) <= n else s[:n] + "…"


def make_backend(kind: str, model: str | None = None, base_url: str | None = None, *, data_dir: str = "data",
                 timeout_s: float = 60.0, **local_options: Any) -> Backend:
    """The backend named `kind` ("groq", "openai", "local"). Secrets come from the environment only."""
    if kind == "groq":
        return GroqBackend(model, base_url, timeout_s)
    if kind == "openai":
        return OpenAICompatBackend(model, base_url, timeout_s)
    if kind == "local":
        return LocalBackend(model, data_dir=data_dir, **local_options)
    raise ValueError(f"unknown backend {kind!r}: expected 'groq', 'openai' or 'local'")


__all__ = ["Backend", "Completion", "LLMError", "RateLimiter", "RetryPolicy", "GroqBackend", "OpenAICompatBackend",
           "LocalBackend", "make_backend", "complete_with_retries", "iter_completions", "complete_many",
           "DEFAULT_MODELS", "PROVIDER_LIMITS", "parse_duration", "parse_retry_after", "estimate_tokens"]
