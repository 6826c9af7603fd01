"""Chat-completion backends behind one interface, a requests/tokens-per-minute limiter and retries.

Used by 03_generate (triples) and 05_evaluate (LLM-as-judge):

    backend = make_backend("groq")                    # or "openai" (+ base_url, model) or "local"
    done = complete_many(backend, [messages, ...], max_tokens=256)   # list of Completion | LLMError

Modules: base (Completion, LLMError, Backend, provider defaults), redact (secrets out of every text),
limiter (RateLimiter, rate-limit headers), retries (RetryPolicy, complete_with_retries, iter_completions),
deadline (a total time limit per HTTP request), remote (groq, openai-compatible), local (transformers),
backends (make_backend).
"""
from .backends import make_backend
from .base import (
                   DEFAULT_MODELS,
                   FATAL,
                   PROVIDER_LIMITS,
                   RETRYABLE,
                   WAIT_TOO_LONG,
                   Backend,
                   Completion,
                   LLMError,
                   Messages,
                   estimate_tokens,
                   messages_tokens,
)
from .limiter import RateLimiter, parse_duration, parse_retry_after
from .local import LocalBackend
from .redact import redact
from .remote import GroqBackend, OpenAICompatBackend
from .retries import RetryPolicy, complete_many, complete_with_retries, iter_completions

__all__ = ["Backend", "Completion", "LLMError", "Messages", "RateLimiter", "RetryPolicy", "GroqBackend",
           "OpenAICompatBackend", "LocalBackend", "make_backend", "complete_with_retries", "iter_completions",
           "complete_many", "redact", "DEFAULT_MODELS", "PROVIDER_LIMITS", "RETRYABLE", "FATAL", "WAIT_TOO_LONG",
           "parse_duration", "parse_retry_after", "estimate_tokens", "messages_tokens"]
