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
from .deadline import ReplyTooLarge, deadline_client
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


def _malformed(what: str) -> LLMError:
    return LLMError("malformed", f"reply body of the wrong shape: {what}")


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _token_count(usage: dict, name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise _malformed(f"usage.{name} is {_short(value, 40)!r}, not a count")
    return int(value)


# words in a 200 error body's code/type that say every later request fails the same way
_ERROR_KINDS = (("auth", ("auth", "api_key", "apikey", "permission", "unauthorized", "forbidden")),
                ("not_found", ("model_not_found", "not_found", "decommissioned", "does not exist")),
                ("rate_limit", ("rate_limit",)))


def _error_body(err: Any) -> LLMError:
    """A 200 whose body is {"error": ...}: the server's own message, classified like its HTTP twin."""
    if isinstance(err, dict):
        message = err.get("message") or json.dumps(err, default=str)
        words = " ".join(str(err.get(k) or "") for k in ("code", "type", "message")).lower()
    else:
        message = words = str(err)
        words = words.lower()
    kind = next((k for k, keys in _ERROR_KINDS if any(w in words for w in keys)), "server")
    return LLMError(kind, f"HTTP 200 with an error body: {_short(message)}")


def _completion_from_dict(data: Any, model: str, latency: float, headers: dict) -> Completion:
    """Validate an OpenAI-shaped chat.completion body (dict) into a Completion, or raise LLMError: every field
    read is checked, so an odd shape is a retryable "malformed" error, never a crash."""
    if not isinstance(data, dict):
        raise _malformed(f"not a JSON object: {_short(str(data), 120)!r}")
    choices = data.get("choices")
    if "error" in data and not choices:
        raise _error_body(data["error"])
    if not choices:
        raise LLMError("empty", "reply has no choices")
    if not isinstance(choices, list):
        raise _malformed(f"choices is a {_type(choices)}, not a list")
    first = choices[0]
    if not isinstance(first, dict):
        raise _malformed(f"choices[0] is a {_type(first)}, not an object")
    message = first.get("message")
    if message is None:
        raise LLMError("empty", "reply's first choice has no message content")
    if not isinstance(message, dict):
        raise _malformed(f"choices[0].message is a {_type(message)}, not an object")
    text = message.get("content")
    if text is None:
        raise LLMError("empty", "reply's first choice has no message content")
    if not isinstance(text, str):
        raise _malformed(f"choices[0].message.content is a {_type(text)}, not a string")
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise _malformed(f"usage is a {_type(usage)}, not an object")
    finish = first.get("finish_reason")
    name = data.get("model")
    return Completion(text=text, prompt_tokens=_token_count(usage, "prompt_tokens"),
                      completion_tokens=_token_count(usage, "completion_tokens"),
                      finish_reason=finish if isinstance(finish, str) else None,
                      model=name if isinstance(name, str) and name else model, latency_s=latency, headers=headers)


def _body_problem(e: BaseException) -> LLMError | None:
    """A reply body too large or of broken compression, found anywhere in an exception's causes: "malformed"."""
    import httpx

    while e is not None:
        if isinstance(e, ReplyTooLarge):
            return LLMError("malformed", str(e))
        if isinstance(e, httpx.DecodingError):
            return LLMError("malformed", f"reply body could not be decoded ({e})")
        e = e.__cause__ or e.__context__
    return None


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
            data = raw.http_response.json()   # the body as sent, checked below (no lenient model parsing)
        except g.APITimeoutError as e:
            raise LLMError("timeout", f"no complete reply within timeout_s ({e})") from e
        except g.APIConnectionError as e:
            raise _body_problem(e) or LLMError("connection", str(e)) from e
        except g.APIStatusError as e:
            raise _classify_status(e.status_code, _short(e.message), parse_retry_after(e.response.headers)) from e
        except (ValueError, g.APIResponseValidationError) as e:   # JSONDecodeError is a ValueError
            raise LLMError("malformed", f"reply body is not valid JSON ({e})") from e
        return _completion_from_dict(data, self.model, time.monotonic() - t0, headers)


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
        except hx.DecodingError as e:
            raise _body_problem(e) from e
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

