"""Retries and concurrency: one request retried on transient failures, many run at once under the limiter.

An HTTP 200 whose content is empty or whitespace is a failed attempt (kind "empty"), retried like a 500: it
is never returned as an answer, so it can never be cached as one. A server asking to wait longer than
`max_wait_s` (Retry-After) is not obeyed: the request fails with kind "wait_too_long" and the run stops
sending (the caller records those pages as failed; a rerun tries them again).
"""
from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from .base import WAIT_TOO_LONG, Backend, Completion, LLMError, Messages, messages_tokens
from .limiter import RateLimiter


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins when it says longer, up to
    `max_wait_s` (past it the request gives up instead of waiting)."""

    max_attempts: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.5      # delay * uniform(1 - jitter, 1 + jitter)
    max_wait_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        rng = rng or random
        backoff = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        backoff *= rng.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            return max(retry_after, 0.0) + rng.uniform(0, 0.1 * max(retry_after, 0.1))
        return backoff

    def too_long(self, retry_after: float | None) -> bool:
        return retry_after is not None and retry_after > self.max_wait_s


def _attempt(backend: Backend, messages: Messages, params: dict) -> Completion:
    """One call; an empty or whitespace-only reply is raised as a retryable failure, never returned."""
    done = backend.complete(messages, **params)
    if not (done.text or "").strip():
        raise LLMError("empty", f"HTTP 200 but the reply's content is empty ({len(done.text or '')} characters, "
                                "whitespace only)")
    return done


def complete_with_retries(backend: Backend, messages: Messages, *, limiter: RateLimiter | None = None,
                          policy: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                          **params: Any) -> Completion:
    """One request, retried on transient failures; raises the last LLMError when it fails for good.
    The result (or error) carries `retried`: the kinds of the failed attempts before it."""
    policy = policy or RetryPolicy()
    est = messages_tokens(messages) + int(params.get("max_tokens", 0))
    retried: Counter = Counter()
    attempt = 0
    while True:
        attempt += 1
        if limiter is not None:
            limiter.acquire(est)
        try:
            done = _attempt(backend, messages, params)
        except LLMError as e:
            e.attempts, e.retried = attempt, retried
            if e.kind == "rate_limit" and policy.too_long(e.retry_after):
                raise _wait_too_long(e, policy) from e
            if e.kind == "rate_limit" and limiter is not None and e.retry_after:
                limiter.pause(e.retry_after)
            if not e.retryable or attempt >= policy.max_attempts:
                raise
            retried[e.kind] += 1
            sleep(policy.delay(attempt, e.retry_after))
            continue
        done.attempts, done.retried = attempt, retried
        if limiter is not None:
            limiter.settle(est, done.prompt_tokens + done.completion_tokens)
            limiter.observe_headers(done.headers)
        return done


def _wait_too_long(e: LLMError, policy: RetryPolicy) -> LLMError:
    out = LLMError(WAIT_TOO_LONG, f"the server asked to wait {e.retry_after:.0f} s (Retry-After), more than "
                                  f"max_wait_s={policy.max_wait_s:g}: not waiting; rerun later", e.status,
                   e.retry_after, e.attempts)
    out.retried = e.retried
    return out


def iter_completions(backend: Backend, jobs: Iterable[tuple[Any, Messages]], *, workers: int = 8,
                     limiter: RateLimiter | None = None, policy: RetryPolicy | None = None,
                     **params: Any) -> Iterator[tuple[Any, Completion | LLMError]]:
    """Yield (key, Completion or LLMError) as requests finish. Remote backends run `workers` requests at
    once under the limiter; batching backends (local models) run `batch_size` prompts per forward pass.
    An error that stops the run (a bad key or model; a Retry-After over max_wait_s) stops sending at once:
    each request not yet sent is yielded as an error of the same kind ("not sent: ..."), and a FATAL one is
    raised after in-flight requests settle."""
    if getattr(backend, "batch_size", 1) > 1:
        yield from _iter_batched(backend, jobs, **params)
        return
    stopped: list[LLMError] = []          # the first error that stops the run, seen by every worker at once

    def one(messages: Messages) -> Completion:
        if stopped:
            raise LLMError(stopped[0].kind, f"not sent: {stopped[0]}", stopped[0].status, stopped[0].retry_after, 0)
        try:
            return complete_with_retries(backend, messages, limiter=limiter, policy=policy, **params)
        except LLMError as e:
            if e.stops_run and not stopped:
                stopped.append(e)
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llm") as pool:
        # everything is queued at once so workers never wait on the consumer (which fsyncs each reply)
        running = {pool.submit(one, messages): key for key, messages in jobs}
        try:
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    key = running.pop(fut)
                    try:
                        yield key, fut.result()
                    except LLMError as e:
                        yield key, e
        finally:
            for other in running:
                other.cancel()
        if stopped and stopped[0].fatal:
            raise stopped[0]


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
