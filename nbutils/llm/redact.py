"""One place that keeps secrets out of everything 03 prints or stores: error messages, cached replies,
reports, the notebook. An error body may echo the request's Authorization header or the key itself."""
from __future__ import annotations

import os
import re

MASK = "[REDACTED]"
SECRET_ENV_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
_PATTERNS = [
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;}\]]+"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"()\b(?:gsk|hf|xai)_[A-Za-z0-9_]{8,}"),          # Groq, Hugging Face, xAI keys
    re.compile(r"()\bsk-[A-Za-z0-9_-]{8,}"),                       # OpenAI-style keys
]


def secret_values() -> list[str]:
    """Values of environment variables named like secrets (`*_API_KEY`, `*_TOKEN`, ...), longest first."""
    found = {v for k, v in os.environ.items()
             if k.upper().endswith(SECRET_ENV_SUFFIXES) and len(v) >= 8}
    return sorted(found, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret from the environment and every key/Authorization-looking value masked."""
    if not text:
        return text
    for value in secret_values():
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text
