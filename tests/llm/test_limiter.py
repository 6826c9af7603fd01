"""nbutils.llm.limiter on a fake clock: requests spaced at the configured rate, tokens per minute, pauses from
the server's headers (never longer than max_pause_s), durations parsed."""
import pytest

from nbutils.llm import RateLimiter, parse_duration


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


# ---------------------------------------------------------------- empty replies, long waits, drips, secrets
def test_a_reset_header_of_hours_pauses_no_longer_than_max_pause_s():
    clock = FakeClock()
    lim = RateLimiter(clock=clock, max_pause_s=30)
    lim.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2h"})
    lim.acquire(sleep=clock.sleep)
    assert clock.t - 100.0 == pytest.approx(30.0)
