"""`make_backend(kind, ...)`: the one way the stages get a backend."""
from __future__ import annotations

from typing import Any

from .base import Backend
from .local import LocalBackend
from .remote import GroqBackend, OpenAICompatBackend


def make_backend(kind: str, model: str | None = None, base_url: str | None = None, *, data_dir: str = "data",
                 timeout_s: float = 60.0, **local_options: Any) -> Backend:
    """The backend named `kind` ("groq", "openai", "local"). Secrets come from the environment only;
    `timeout_s` is the total time one remote request may take."""
    if kind == "groq":
        return GroqBackend(model, base_url, timeout_s)
    if kind == "openai":
        return OpenAICompatBackend(model, base_url, timeout_s)
    if kind == "local":
        return LocalBackend(model, data_dir=data_dir, **local_options)
    raise ValueError(f"unknown backend {kind!r}: expected 'groq', 'openai' or 'local'")
