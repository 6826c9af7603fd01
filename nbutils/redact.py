"""One place that keeps secrets out of everything a stage prints or stores: error messages, cached replies,
reports, the notebook. An error body may echo the request's Authorization header or the key itself; a URL may
carry credentials (`user:pass@`, `?api_key=`)."""
from __future__ import annotations

import os
import re

MASK = "[REDACTED]"
SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:[\w.-]*(?:key|token|secret|password|passwd|auth|signature|sig))=)"
                           r"[^&#\s'\"]+")
_AUTH_HEADER = re.compile(r"(?i)\b((?:authorization|x-api-key|api-key|cookie)\W{1,4})(?:(?:bearer|basic|token)\s+)?"
                          r"[^\s;,'\"}\]]+")
_BEARER = re.compile(r"(?i)\b((?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}")
_KEY_SHAPED = re.compile(r"\b(?:(?:gsk|hf|xai)_[A-Za-z0-9_]{8,}|sk-[A-Za-z0-9_-]{8,})")  # Groq, HF, xAI, OpenAI


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets (8+ characters, longest first)."""
    values = {v for k, v in os.environ.items()
              if any(w in k.upper() for w in SECRET_ENV_WORDS) and len(v.strip()) >= 8}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret from the environment and every credential-looking value masked."""
    if not text:
        return text
    text = str(text)
    for value in secret_values():
        text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _SECRET_QUERY.sub(rf"\1{MASK}", text)
    text = _AUTH_HEADER.sub(rf"\1{MASK}", text)
    text = _BEARER.sub(rf"\1{MASK}", text)
    return _KEY_SHAPED.sub(MASK, text)


def redact_values(obj):
    """redact() applied to every string inside a JSON-like value (parameters written to run.json)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_values(v) for v in obj]
    return obj



def redact_notebook(path) -> bool:
    """Mask credentials everywhere in an executed notebook (the injected parameters cell, printed output);
    True when something changed. The runner calls it on every notebook it wrote."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return False
    text = p.read_text(encoding="utf-8")
    nb = json.loads(text)
    clean = redact_values(nb)
    if clean == nb:
        return False
    from .io import write_json

    write_json(p, clean, indent=1)
    return True
