"""The remote backends: Groq (its own client) and any OpenAI-compatible server (plain httpx).

Both classify failures into LLMError kinds (429 rate_limit, 5xx server, 401/403 auth, ...), give each request
a total time limit (deadline.py), and never retry on their own: retries.py owns retries, so every attempt
passes the limiter. Keys come from the environment only; error text is redacted (LLMError does it).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from .base import DEFAULT_MODELS, Completion, LLMError, Messages
from .deadline import deadline_client
from .limiter import parse_retry_after


def _short(text: Any, n: int = 300) -> str:
    s = text if isinstance(text, str) else json.dumps(text, default=str)
    return s if len(s) <= n else s[:n] + "…"


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
    """The real `groq` client. Key from GROQ_API_KEY; base_url (else GROQ_BASE_URL, else Groq's API);
    `timeout_s` limits each request as a whole."""

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
        self.client = groq.Groq(api_key=key, base_url=base_url or None, max_retries=0, timeout=timeout_s,
                                http_client=deadline_client(timeout_s))

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
            raise LLMError("timeout", f"no complete reply within timeout_s ({e})") from e
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
    Key (optional) from OPENAI_API_KEY; `timeout_s` limits each request as a whole."""

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
        self.client = deadline_client(timeout_s, headers=headers)

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion:
        hx = self._httpx
        body = _request_body(self.model, messages, max_tokens, temperature, json_mode)
        t0 = time.monotonic()
        try:
            r = self.client.post(f"{self.base_url}/chat/completions", json=body)
        except hx.TimeoutException as e:
            raise LLMError("timeout", f"no complete reply within timeout_s ({e})") from e
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

