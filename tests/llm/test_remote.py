"""nbutils.llm.remote against a loopback server through the real groq client / httpx: recovery with retries,
no retries of its own, key and base URL from the environment, the OpenAI-compatible backend, secrets echoed in
an error body redacted, many workers not capped by the connection pool."""
import time

import pytest

from nbutils.llm import LLMError, RetryPolicy, complete_many, complete_with_retries, make_backend
from tests.support.fake_llm_server import FakeLLMServer
from tests.support.llm import FAST, MSG


def test_groq_client_recovers_from_429_500_timeout_malformed_and_empty(groq_env):
    script = [{"status": 429, "retry_after": "0.4"}, {"status": 500}, {"hang_s": 1.5},
              {"raw": "<html>bad gateway</html>"}, {"choices": []}]
    with FakeLLMServer(script=script) as srv:
        backend = make_backend("groq", "llama-3.3-70b-versatile", srv.url, timeout_s=0.7)
        t0 = time.monotonic()
        done = complete_with_retries(backend, MSG, policy=RetryPolicy(max_attempts=6, base_s=0.05, cap_s=0.1),
                                     max_tokens=64)
        elapsed = time.monotonic() - t0
        assert done.attempts == 6 and "Triple 1:" in done.text
        assert done.prompt_tokens > 0 and done.completion_tokens > 0
        assert elapsed >= 0.4 + 0.7          # honoured Retry-After and waited out the timeout
        assert srv.count() == 6 and all(r["path"] == "/openai/v1/chat/completions" for r in srv.requests)


def test_groq_client_does_not_retry_by_itself(groq_env):
    """The client's own max_retries is 0: every retry is ours (and passes the limiter)."""
    with FakeLLMServer(script=[{"status": 503}]) as srv:
        backend = make_backend("groq", None, srv.url)
        with pytest.raises(LLMError) as e:
            complete_with_retries(backend, MSG, policy=RetryPolicy(max_attempts=1))
        assert e.value.kind == "server" and e.value.status == 503 and srv.count() == 1


def test_groq_needs_a_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    with pytest.raises(LLMError, match="GROQ_API_KEY"):
        make_backend("groq")


def test_groq_base_url_from_environment(groq_env, monkeypatch):
    with FakeLLMServer() as srv:
        monkeypatch.setenv("GROQ_BASE_URL", srv.url)
        done = make_backend("groq").complete(MSG, max_tokens=32)
        assert done.text and srv.count() == 1


def test_openai_compatible_backend_with_httpx(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    with FakeLLMServer(script=[{"status": 429, "retry_after": "0.1"}, {"choices": []}]) as srv:
        backend = make_backend("openai", "my-vllm-model", srv.url + "/v1")
        done = complete_with_retries(backend, MSG, policy=FAST, max_tokens=32, json_mode=True)
        assert done.attempts == 3 and done.model == "my-vllm-model"
        assert srv.requests[-1]["path"] == "/v1/chat/completions"
    with pytest.raises(LLMError, match="base_url"):
        make_backend("openai", "m", None)


# ---------------------------------------------------------------- empty replies, long waits, drips, secrets
@pytest.mark.parametrize("kind", ["groq", "openai"])
def test_an_error_body_echoing_the_authorization_header_is_redacted(monkeypatch, kind):
    key = "gsk_test_not_a_real_key_0123456789" if kind == "groq" else "sk-local-not-a-real-key-0123"
    monkeypatch.setenv("GROQ_API_KEY" if kind == "groq" else "OPENAI_API_KEY", key)
    with FakeLLMServer(script=[{"status": 400, "echo_headers": True}]) as srv:
        url = srv.url + ("/v1" if kind == "openai" else "")
        backend = make_backend(kind, "m" if kind == "openai" else None, url)
        with pytest.raises(LLMError) as e:
            backend.complete(MSG, max_tokens=32)
    assert "you sent" in str(e.value) and key not in e.value.describe() and key[:12] not in str(e.value)


def test_many_workers_are_not_capped_by_the_connection_pool(groq_env):
    """25 workers must keep 25 requests in flight (a pool of 10 connections would make this take 3 rounds)."""
    with FakeLLMServer(latency_s=1.0) as srv:
        backend = make_backend("groq", None, srv.url)
        t0 = time.monotonic()
        results = complete_many(backend, [MSG] * 25, workers=25, policy=FAST)
        elapsed = time.monotonic() - t0
    assert all(not isinstance(r, LLMError) for r in results)
    assert elapsed < 2.5, elapsed
