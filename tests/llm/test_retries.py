"""nbutils.llm.retries against a loopback server: backoff with jitter, a page failing for good reported while
others go on, a bad key stopping the run, concurrency under the limit, empty replies retried, over-long
Retry-After not obeyed."""
import time

import pytest

from nbutils.llm import (
    LLMError,
    RateLimiter,
    RetryPolicy,
    complete_many,
    complete_with_retries,
    iter_completions,
    make_backend,
)
from tests.support.fake_llm_server import FakeLLMServer
from tests.support.llm import FAST, MSG


def test_backoff_grows_with_jitter_and_retry_after_wins():
    p = RetryPolicy(base_s=1, cap_s=8, jitter=0.5)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (6, 8)]:
        delays = [p.delay(attempt) for _ in range(50)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays) and len(set(delays)) > 1
    assert 3.0 <= p.delay(1, retry_after=3.0) <= 3.3


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


def test_requests_run_concurrently_under_the_limit(groq_env):
    with FakeLLMServer(latency_s=0.4, rpm=1200) as srv:
        backend = make_backend("groq", None, srv.url)
        t0 = time.monotonic()
        results = complete_many(backend, [MSG] * 16, workers=8, limiter=RateLimiter(rpm=1200), policy=FAST)
        elapsed = time.monotonic() - t0
    assert all(not isinstance(r, LLMError) for r in results)
    assert elapsed < 16 * 0.4 / 3       # sequential would take 6.4 s


# ---------------------------------------------------------------- empty replies, long waits, drips, secrets
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
