"""Backends, limiter and retries, against a loopback server driven through the real groq client / httpx."""
import time

import pytest
from fake_llm_server import FakeLLMServer

from nbutils.llm import (
    LLMError,
    RateLimiter,
    RetryPolicy,
    complete_many,
    complete_with_retries,
    iter_completions,
    make_backend,
    parse_duration,
)

MSG = [{"role": "user", "content": "Text: rotary embeddings rotate query and key vectors by position."}]
FAST = RetryPolicy(max_attempts=4, base_s=0.05, cap_s=0.2)


@pytest.fixture
def groq_env(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_not_a_real_key")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_limiter_spaces_requests_at_the_configured_rate():
    clock = FakeClock()
    lim = RateLimiter(rpm=60, headroom=1.0, clock=clock)     # 1 request/s, burst of 1
    starts = []
    for _ in range(5):
        lim.acquire(sleep=clock.sleep)
        starts.append(clock.t - 100.0)
    assert starts == pytest.approx([0, 1, 2, 3, 4], abs=1e-6)


def test_limiter_tokens_per_minute_lets_a_big_request_through_then_waits():
    clock = FakeClock()
    lim = RateLimiter(tpm=600, headroom=1.0, clock=clock)    # 10 tokens/s
    lim.acquire(100, sleep=clock.sleep)                       # debt of 90 tokens
    assert clock.t == 100.0
    lim.acquire(10, sleep=clock.sleep)                        # waits for the debt to refill above 0
    assert clock.t - 100.0 == pytest.approx(9.1, abs=0.05)


def test_limiter_pause_and_headers():
    clock = FakeClock()
    lim = RateLimiter(rpm=0, clock=clock)
    lim.pause(2.5)
    lim.acquire(sleep=clock.sleep)
    assert clock.t - 100.0 == pytest.approx(2.5)
    lim.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s",
                         "x-ratelimit-limit-tokens": "6000"})
    assert lim.tpm == 6000
    t0 = clock.t
    lim.acquire(sleep=clock.sleep)
    assert clock.t - t0 == pytest.approx(90.0)


@pytest.mark.parametrize("value, seconds", [("7.66s", 7.66), ("2m59.56s", 179.56), ("450ms", 0.45), ("12", 12.0),
                                            ("1h2m", 3720.0), (None, None)])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_backoff_grows_with_jitter_and_retry_after_wins():
    p = RetryPolicy(base_s=1, cap_s=8, jitter=0.5)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (6, 8)]:
        delays = [p.delay(attempt) for _ in range(50)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays) and len(set(delays)) > 1
    assert 3.0 <= p.delay(1, retry_after=3.0) <= 3.3


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


def test_a_page_failing_for_good_is_reported_and_others_go_on(groq_env):
    with FakeLLMServer(script=[{"status": 500}] * 3) as srv:
        backend = make_backend("groq", None, srv.url)
        results = complete_many(backend, [MSG] * 4, workers=1, policy=RetryPolicy(max_attempts=3, base_s=0.01))
        assert isinstance(results[0], LLMError) and results[0].kind == "server" and results[0].attempts == 3
        assert all(not isinstance(r, LLMError) for r in results[1:])


def test_bad_key_stops_the_run(groq_env):
    with FakeLLMServer(script=[{"status": 401, "message": "Invalid API Key"}] * 20) as srv:
        backend = make_backend("groq", None, srv.url)
        with pytest.raises(LLMError) as e:
            list(iter_completions(backend, ((i, MSG) for i in range(50)), workers=2, policy=FAST))
        assert e.value.kind == "auth" and srv.count() < 10


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


def test_requests_run_concurrently_under_the_limit(groq_env):
    with FakeLLMServer(latency_s=0.4, rpm=1200) as srv:
        backend = make_backend("groq", None, srv.url)
        t0 = time.monotonic()
        results = complete_many(backend, [MSG] * 16, workers=8, limiter=RateLimiter(rpm=1200), policy=FAST)
        elapsed = time.monotonic() - t0
    assert all(not isinstance(r, LLMError) for r in results)
    assert elapsed < 16 * 0.4 / 3       # sequential would take 6.4 s


# ---------------------------------------------------------------- issue 17: empty replies, long waits, drips, secrets

@pytest.mark.parametrize("content", ["", "   \n\t "])
def test_an_empty_reply_is_retried_not_returned(groq_env, content):
    with FakeLLMServer(script=[{"content": content}, {"content": content}]) as srv:
        backend = make_backend("groq", None, srv.url)
        done = complete_with_retries(backend, MSG, policy=FAST, max_tokens=32)
        assert done.text.strip() and done.attempts == 3 and done.retried == {"empty": 2}
        assert srv.count() == 3


def test_a_reply_empty_on_every_attempt_fails_as_retriable(groq_env):
    with FakeLLMServer(script=[{"content": ""}] * 4) as srv:
        backend = make_backend("groq", None, srv.url)
        with pytest.raises(LLMError) as e:
            complete_with_retries(backend, MSG, policy=FAST, max_tokens=32)
    assert e.value.kind == "empty" and e.value.retryable and e.value.attempts == 4


def test_a_retry_after_over_max_wait_s_is_not_obeyed(groq_env):
    with FakeLLMServer(script=[{"status": 429, "retry_after": "3600"}] * 10) as srv:
        backend = make_backend("groq", None, srv.url)
        t0 = time.monotonic()
        results = complete_many(backend, [MSG] * 6, workers=2, limiter=RateLimiter(),
                                policy=RetryPolicy(max_attempts=3, base_s=0.01, max_wait_s=30))
        elapsed = time.monotonic() - t0
    assert elapsed < 5
    assert all(isinstance(r, LLMError) and r.kind == "wait_too_long" for r in results)
    assert "3600 s" in str(results[0]) and "max_wait_s=30" in str(results[0])
    assert srv.count() <= 2      # only the ones in flight when the first 429 came; the rest not sent


@pytest.mark.parametrize("kind", ["groq", "openai"])
def test_a_dripping_server_is_cut_at_the_total_time_limit(groq_env, kind):
    with FakeLLMServer(script=[{"drip_s": 0.5}]) as srv:
        url = srv.url + ("/v1" if kind == "openai" else "")
        backend = make_backend(kind, "m" if kind == "openai" else None, url, timeout_s=2.0)
        t0 = time.monotonic()
        with pytest.raises(LLMError) as e:
            backend.complete(MSG, max_tokens=32)
        elapsed = time.monotonic() - t0
    assert e.value.kind == "timeout" and elapsed < 3.5, elapsed


def test_redact_masks_env_secrets_and_key_shapes(monkeypatch):
    from nbutils.llm import redact

    monkeypatch.setenv("MY_SERVICE_TOKEN", "plainsecretvalue99")
    text = ('{"authorization": "Bearer gsk_abcdefghij1234567890", "note": "plainsecretvalue99", '
            '"other": "sk-proj-ABCDEFGH12345678 hf_ABCDEFGHIJKLMNOP"} Authorization: Basic dXNlcjpwYXNz')
    out = redact(text)
    for secret in ("gsk_abc", "plainsecretvalue99", "sk-proj", "hf_ABC", "dXNlcjpwYXNz"):
        assert secret not in out
    assert redact("attention is all you need: tokens: 512") == "attention is all you need: tokens: 512"


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


def test_a_reset_header_of_hours_pauses_no_longer_than_max_pause_s():
    clock = FakeClock()
    lim = RateLimiter(clock=clock, max_pause_s=30)
    lim.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2h"})
    lim.acquire(sleep=clock.sleep)
    assert clock.t - 100.0 == pytest.approx(30.0)
