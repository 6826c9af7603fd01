"""A failure with a reason the report shows, and the one way the stage writes text: secrets redacted."""
from __future__ import annotations

import os
import re

SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
SECRET_QUERY = re.compile(r"(?i)([?&;](?:[\w.-]*(?:key|token|secret|password|passwd|auth|signature|sig))=)[^&#\s'\"]+")
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
AUTH_HEADER = re.compile(r"(?i)\b(authorization|x-api-key|api-key|cookie)(\W{1,4})(?:(?:bearer|basic|token)\s+)?"
                         r"[^\s;,'\"}]+")
BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")


class ScrapeError(Exception):
    """A per-item failure with a reason the report shows; the run goes on."""


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets (8+ characters, longest first)."""
    values = {v for k, v in os.environ.items()
              if any(w in k.upper() for w in SECRET_ENV_WORDS) and len(v.strip()) >= 8}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with secrets replaced by ***: values of secret-named environment variables, URL user:password@,
    key/token query parameters, Authorization-like headers and bearer tokens."""
    text = str(text)
    for value in secret_values():
        text = text.replace(value, "***")
    text = URL_USERINFO.sub(r"\1***@", text)
    text = SECRET_QUERY.sub(r"\1***", text)
    text = AUTH_HEADER.sub(r"\1\2***", text)
    return BEARER.sub(r"\1 ***", text)


def say(text: str) -> None:
    """Print one line of progress or failure, redacted."""
    print(redact(text))
