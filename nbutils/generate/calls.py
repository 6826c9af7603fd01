"""Calling the LLM for every request not in a cache; each usable reply is appended (fsync'd) to its cache as it
arrives. Generation (pages -> triples) and the judge (triples -> verdicts) go through the same path: an
`LLMSettings` (backend, model, limits, retries) -> `build_backend`, `make_limiter`, then `send_pending`, which
runs the requests under the limiter with retries and hands each reply or failure to the caller.

Only a usable answer is cached: an empty reply is retried (retries.py) and, if it stays empty, the page is
recorded as failed, so a rerun calls it again. Reply text is redacted before it is stored.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from ..io import append_jsonl
from ..llm import (
    PROVIDER_LIMITS,
    WAIT_TOO_LONG,
    Completion,
    LLMError,
    Messages,
    RateLimiter,
    RetryPolicy,
    iter_completions,
    make_backend,
    redact,
)
from ..llm.batch import BATCH_BACKENDS, BatchSettings, batch_api, send_batched
from .build import parse_reply_text
from .config import GenerateConfig
from .jobs import PageJob
from .prompts import PromptTemplate
from .result import GenerateResult


@dataclass(frozen=True)
class LLMSettings:
    """Who answers and how hard we may push it: one for generation, one for the judge (GenerateConfig)."""

    backend: str
    model: str
    base_url: str | None = None
    timeout_s: float = 60.0
    rpm: float | None = None
    tpm: float | None = None
    workers: int | None = None
    max_attempts: int = 6
    max_wait_s: float = 120.0
    batch_size: int = 8
    repetition_penalty: float = 1.0
    threads: int = 0
    reply_prefix: str = ""
    data_dir: str = "data"
    batch: bool = False            # groq/openai: through the provider's batch API (llm/batch.py)
    batch_dir: str = ""            # where batch ids and states are kept (cache/batches)
    batch_window: str = "24h"
    batch_poll_s: float = 30.0
    batch_wait_s: float = 0.0
    batch_discount: float = 0.5


def with_batch(s: LLMSettings, cfg: GenerateConfig) -> LLMSettings:
    """`s` with the config's batch fields (batch mode applies to groq and openai; a local backend runs as usual)."""
    return replace(s, batch=cfg.batch and s.backend in BATCH_BACKENDS, batch_dir=str(cfg.batch_dir),
                   batch_window=cfg.batch_window, batch_poll_s=cfg.batch_poll_s, batch_wait_s=cfg.batch_wait_s,
                   batch_discount=cfg.batch_discount)


def generation_settings(cfg: GenerateConfig, template: PromptTemplate) -> LLMSettings:
    s = LLMSettings(cfg.backend, cfg.model_name, cfg.base_url, cfg.timeout_s, cfg.rpm, cfg.tpm, cfg.workers,
                    cfg.max_attempts, cfg.max_wait_s, cfg.batch_size, cfg.repetition_penalty, cfg.threads,
                    template.reply_prefix, cfg.data_dir)
    return with_batch(s, cfg)


def build_backend(s: LLMSettings, json_mode: bool):
    if s.backend == "local" and json_mode:
        raise ValueError("json_mode needs a backend with response_format support (groq or openai), not local")
    if s.backend == "local":
        return make_backend("local", s.model, data_dir=s.data_dir, batch_size=s.batch_size,
                            reply_prefix=s.reply_prefix, repetition_penalty=s.repetition_penalty,
                            threads=s.threads or None)
    backend = make_backend(s.backend, s.model or None, s.base_url, timeout_s=s.timeout_s)
    if json_mode and not backend.supports_json_mode:
        raise ValueError(f"json_mode needs a backend with response_format support, not {s.backend}")
    return backend


def make_limiter(s: LLMSettings) -> RateLimiter:
    limits = PROVIDER_LIMITS.get(s.backend, {})
    rpm = limits.get("rpm", 0) if s.rpm is None else s.rpm
    tpm = limits.get("tpm", 0) if s.tpm is None else s.tpm
    return RateLimiter(rpm=rpm, tpm=tpm, rpm_from_headers=s.backend == "openai", max_pause_s=s.max_wait_s)


@dataclass
class SendStats:
    """What one `send_pending` did: calls made (attempted requests), tokens, retries, time, limiter waits."""

    calls: int = 0
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retried: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    limiter_wait_s: float = 0.0
    batch: dict = field(default_factory=dict)    # batch mode: batches submitted/resumed, discount (llm/batch.py)


def send_pending(backend, s: LLMSettings, pending: dict[str, Messages], params: dict, *, desc: str, unit: str,
                 on_reply: Callable[[str, Completion], dict | None],
                 on_error: Callable[[str, LLMError], None]) -> SendStats:
    """Send every request of `pending` (cache key -> messages) through the limiter with retries; each reply goes
    to `on_reply` (which caches it and may return progress-bar counts), each failure to `on_error`. A
    Retry-After over max_wait_s stops sending (the rest are failures, retried by a rerun); a fatal error (bad
    key, unknown model) is raised once requests in flight settle."""
    from tqdm.auto import tqdm

    stats = SendStats()
    if not pending:
        return stats
    if s.batch:
        return send_batch(backend, s, pending, params, desc=desc, on_reply=on_reply, on_error=on_error)
    limiter = make_limiter(s)
    workers = s.workers or PROVIDER_LIMITS.get(s.backend, {}).get("workers", 4)
    policy = RetryPolicy(max_attempts=s.max_attempts, max_wait_s=s.max_wait_s)
    t0 = time.monotonic()
    extra: Counter = Counter()
    bar = tqdm(total=len(pending), desc=f"{desc} ({s.backend}:{s.model})", unit=unit)
    try:
        for key, res in iter_completions(backend, pending.items(), workers=workers, limiter=limiter,
                                         policy=policy, **params):
            stats.retried.update(res.retried)
            if isinstance(res, Completion) and not res.text.strip():   # a batching backend's empty reply
                res = LLMError("empty", "the reply's content is empty")
            if isinstance(res, LLMError):
                stats.failed += 1
                if res.kind == WAIT_TOO_LONG and not extra[WAIT_TOO_LONG]:
                    bar.write(f"{res}: requests not sent yet are recorded as failed; replies received so far are "
                              "cached, and a rerun sends only the rest")
                extra[res.kind] += 1
                on_error(key, res)
            else:
                stats.ok += 1
                stats.prompt_tokens += res.prompt_tokens
                stats.completion_tokens += res.completion_tokens
                extra.update(on_reply(key, res) or {})
            stats.calls += 1 if res.attempts else 0     # a request not sent (wait_too_long) made no call
            bar.update(1)
            bar.set_postfix(ok=stats.ok, **{k: v for k, v in extra.items() if k != WAIT_TOO_LONG},
                            failed=stats.failed, tok_in=stats.prompt_tokens, tok_out=stats.completion_tokens,
                            refresh=False)
    finally:
        bar.close()
        stats.elapsed_s = time.monotonic() - t0
        stats.limiter_wait_s = limiter.waited_s
    return stats


def send_batch(backend, s: LLMSettings, pending: dict[str, Messages], params: dict, *, desc: str,
               on_reply: Callable[[str, Completion], dict | None],
               on_error: Callable[[str, LLMError], None]) -> SendStats:
    """`send_pending` through the provider's batch API: same replies to `on_reply` (so the same cache), batch ids
    kept under `s.batch_dir` (a rerun resumes them), `stats.batch` for the report (its cost at the discount)."""
    t0 = time.monotonic()
    bs = BatchSettings(s.batch_dir, s.batch_window, s.batch_poll_s, s.batch_wait_s, s.max_attempts,
                       s.batch_discount)
    check = getattr(backend, "check_reply", None)
    out = send_batched(batch_api(backend), bs, desc, s.backend, s.model, pending, params, on_reply=on_reply,
                       on_error=on_error, check=check, desc=desc)
    stats = SendStats(calls=out.requests_submitted, ok=out.replies, failed=out.failed + out.pending,
                      prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                      retried=out.retried, elapsed_s=time.monotonic() - t0)
    stats.batch = {"enabled": True, "discount": s.batch_discount, "window": s.batch_window,
                   "batches_submitted": out.submitted, "batches_resumed": out.resumed,
                   "requests_submitted": out.requests_submitted, "replies": out.replies,
                   "resubmitted": out.resubmitted, "failed": out.failed, "pending": out.pending,
                   "bad_result_lines": out.bad_lines, "polls": out.polls, "batches": out.statuses}
    return stats


def cache_record(key: str, job: PageJob, cfg: GenerateConfig, template: PromptTemplate, params: dict,
                 res: Completion) -> dict:
    """The cache line of one reply (its text redacted: a server echoing a key must not plant it in the data)."""
    return {"key": key, "paper_id": job.paper_id, "page": job.page, "chunk": job.chunk,
            "backend": cfg.backend, "model": cfg.model_name, "prompt_version": template.version,
            "params": params, "reply": redact(res.text), "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
            "latency_s": round(res.latency_s, 3), "attempts": res.attempts, "batch_id": res.batch_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds")}


def call_pending(cfg: GenerateConfig, jobs: list[PageJob], cached: dict[str, dict], result: GenerateResult,
                 template: PromptTemplate) -> None:
    """Call the LLM for every job not in the cache, appending each usable reply to the cache as it arrives."""
    pending: dict[str, list[PageJob]] = defaultdict(list)
    for j in jobs:
        if j.key not in cached:
            pending[j.key].append(j)
    result.pages_cached = sum(1 for j in jobs if j.key in cached)
    if not pending:
        return
    settings = generation_settings(cfg, template)
    params = cfg.request_params()
    backend = build_backend(settings, params["json_mode"])

    def on_reply(key: str, res: Completion) -> dict:
        append_jsonl(cfg.cache_path, [cache_record(key, pending[key][0], cfg, template, params, res)])
        return {"triples": len(parse_reply_text(res.text, params["json_mode"]).triples)}

    def on_error(key: str, err: LLMError) -> None:
        for j in pending[key]:
            result.pages_failed.append({"paper_id": j.paper_id, "page": j.page, "chunk": j.chunk,
                                        "error": err.describe(), "attempts": err.attempts})

    stats = send_pending(backend, settings, {k: js[0].messages for k, js in pending.items()}, params,
                         desc="generate", unit="page", on_reply=on_reply, on_error=on_error)
    result.calls = stats.calls
    result.run_prompt_tokens, result.run_completion_tokens = stats.prompt_tokens, stats.completion_tokens
    result.requests_per_min = stats.calls / stats.elapsed_s * 60 if stats.elapsed_s > 0 else 0.0
    result.limiter_wait_s = stats.limiter_wait_s
    result.retried = dict(stats.retried.most_common())
    result.batch = stats.batch
