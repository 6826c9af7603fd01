"""Calling the LLM for every page not in the cache; each reply is appended (fsync'd) to the cache as it arrives.

Only a usable answer is cached: an empty reply is retried (retries.py) and, if it stays empty, the page is
recorded as failed, so a rerun calls it again. Reply text is redacted before it is stored.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

from ..io import append_jsonl
from ..llm import (
    PROVIDER_LIMITS,
    WAIT_TOO_LONG,
    Completion,
    LLMError,
    RateLimiter,
    RetryPolicy,
    iter_completions,
    make_backend,
    redact,
)
from .build import parse_reply_text
from .config import GenerateConfig
from .jobs import PageJob
from .prompts import PromptTemplate
from .result import GenerateResult


def build_backend(cfg: GenerateConfig, template: PromptTemplate):
    if cfg.backend == "local" and cfg.use_json_mode():
        raise ValueError("json_mode needs a backend with response_format support (groq or openai), not local")
    if cfg.backend == "local":
        return make_backend("local", cfg.model_name, data_dir=cfg.data_dir, batch_size=cfg.batch_size,
                            reply_prefix=template.reply_prefix, repetition_penalty=cfg.repetition_penalty,
                            threads=cfg.threads or None)
    backend = make_backend(cfg.backend, cfg.model_name, cfg.base_url, timeout_s=cfg.timeout_s)
    if cfg.use_json_mode() and not backend.supports_json_mode:
        raise ValueError(f"json_mode needs a backend with response_format support, not {cfg.backend}")
    return backend


def make_limiter(cfg: GenerateConfig) -> RateLimiter:
    limits = PROVIDER_LIMITS.get(cfg.backend, {})
    rpm = limits.get("rpm", 0) if cfg.rpm is None else cfg.rpm
    tpm = limits.get("tpm", 0) if cfg.tpm is None else cfg.tpm
    return RateLimiter(rpm=rpm, tpm=tpm, rpm_from_headers=cfg.backend == "openai", max_pause_s=cfg.max_wait_s)


def cache_record(key: str, job: PageJob, cfg: GenerateConfig, template: PromptTemplate, params: dict,
                 res: Completion) -> dict:
    """The cache line of one reply (its text redacted: a server echoing a key must not plant it in the data)."""
    return {"key": key, "paper_id": job.paper_id, "page": job.page, "chunk": job.chunk,
            "backend": cfg.backend, "model": cfg.model_name, "prompt_version": template.version,
            "params": params, "reply": redact(res.text), "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
            "latency_s": round(res.latency_s, 3), "attempts": res.attempts,
            "created": datetime.now(UTC).isoformat(timespec="seconds")}


def call_pending(cfg: GenerateConfig, jobs: list[PageJob], cached: dict[str, dict], result: GenerateResult,
                 template: PromptTemplate) -> None:
    """Call the LLM for every job not in the cache, appending each usable reply to the cache as it arrives."""
    from tqdm.auto import tqdm

    pending: dict[str, list[PageJob]] = defaultdict(list)
    for j in jobs:
        if j.key not in cached:
            pending[j.key].append(j)
    result.pages_cached = sum(1 for j in jobs if j.key in cached)
    if not pending:
        return
    backend = build_backend(cfg, template)
    limiter = make_limiter(cfg)
    workers = cfg.workers or PROVIDER_LIMITS.get(cfg.backend, {}).get("workers", 4)
    params = cfg.request_params()
    policy = RetryPolicy(max_attempts=cfg.max_attempts, max_wait_s=cfg.max_wait_s)
    t0 = time.monotonic()
    counts: Counter = Counter()
    retried: Counter = Counter()
    bar = tqdm(total=len(pending), desc=f"generate ({cfg.backend}:{cfg.model_name})", unit="page")
    try:
        for key, res in iter_completions(backend, ((k, js[0].messages) for k, js in pending.items()),
                                         workers=workers, limiter=limiter, policy=policy, **params):
            retried.update(res.retried)
            if isinstance(res, Completion) and not res.text.strip():   # a batching backend's empty reply
                res = LLMError("empty", "the reply's content is empty")
            if isinstance(res, LLMError):
                counts["failed"] += 1
                if res.kind == WAIT_TOO_LONG and not counts[WAIT_TOO_LONG]:
                    bar.write(f"{res}: pages not sent yet are recorded as failed; replies received so far are "
                              "cached, and a rerun sends only the rest")
                counts[res.kind] += 1
                for j in pending[key]:
                    result.pages_failed.append({"paper_id": j.paper_id, "page": j.page, "chunk": j.chunk,
                                                "error": res.describe(), "attempts": res.attempts})
            else:
                append_jsonl(cfg.cache_path, [cache_record(key, pending[key][0], cfg, template, params, res)])
                counts["ok"] += 1
                counts["triples"] += len(parse_reply_text(res.text, params["json_mode"]).triples)
                counts["tok_in"] += res.prompt_tokens
                counts["tok_out"] += res.completion_tokens
            result.calls += 1 if res.attempts else 0     # a page not sent (wait_too_long) made no call
            bar.update(1)
            bar.set_postfix(ok=counts["ok"], triples=counts["triples"], failed=counts["failed"],
                            tok_in=counts["tok_in"], tok_out=counts["tok_out"], refresh=False)
    finally:
        bar.close()
        elapsed = time.monotonic() - t0
        result.run_prompt_tokens, result.run_completion_tokens = counts["tok_in"], counts["tok_out"]
        result.requests_per_min = result.calls / elapsed * 60 if elapsed > 0 else 0.0
        result.limiter_wait_s = limiter.waited_s
        result.retried = dict(retried.most_common())
