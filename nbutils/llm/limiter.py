"""A requests/minute + tokens/minute limiter shared by all worker threads, and the rate-limit headers it reads."""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Groq/OpenAI reset durations ("7.66s", "2m59.56s", "1h2m", "450ms", "12") -> seconds."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from retry-after-ms / retry-after (number; an HTTP date is treated as unknown)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        return None


class RateLimiter:
    """Token buckets for requests/minute and tokens/minute, shared by all worker threads.

    Each bucket refills continuously and holds at most `burst_s` seconds of allowance (at least one
    request). A request may take the token bucket into debt (a big page still goes through), later
    requests wait for it to refill. `pause(seconds)` (a 429's Retry-After) holds everybody back, and
    `observe_headers` syncs with the server's x-ratelimit-* view. `headroom` < 1 runs slightly under the
    configured rate so clock jitter does not turn into 429s. 0 = unlimited. No pause is longer than
    `max_pause_s` (a daily quota's reset of hours must not freeze the run: the next request's 429 says so)."""

    def __init__(self, rpm: float = 0, tpm: float = 0, burst_s: float = 1.0, headroom: float = 0.98,
                 rpm_from_headers: bool = False, clock: Callable[[], float] = time.monotonic,
                 max_pause_s: float = float("inf")):
        self.rpm, self.tpm, self.burst_s, self.headroom = float(rpm), float(tpm), burst_s, headroom
        self.max_pause_s = max_pause_s
        self.rpm_from_headers = rpm_from_headers   # OpenAI's limit-requests is per minute; Groq's per day
        self.clock = clock
        self._cond = threading.Condition()
        self._t = clock()
        self._req = self._req_capacity()
        self._tok = self._tok_capacity()
        self._paused_until = 0.0
        self.waited_s = 0.0

    def _req_rate(self) -> float:
        return self.rpm * self.headroom / 60.0

    def _tok_rate(self) -> float:
        return self.tpm * self.headroom / 60.0

    def _req_capacity(self) -> float:
        return max(1.0, self._req_rate() * self.burst_s)

    def _tok_capacity(self) -> float:
        return max(1.0, self._tok_rate() * self.burst_s)

    def _refill(self, now: float) -> None:
        dt = max(0.0, now - self._t)
        self._t = now
        if self.rpm:
            self._req = min(self._req_capacity(), self._req + dt * self._req_rate())
        if self.tpm:
            self._tok = min(self._tok_capacity(), self._tok + dt * self._tok_rate())

    def _wait_needed(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        if self.rpm and self._req < 1.0:
            return (1.0 - self._req) / self._req_rate()
        if self.tpm and self._tok <= 0:
            return (1.0 - self._tok) / self._tok_rate()
        return 0.0

    def acquire(self, tokens: int = 0, sleep: Callable[[float], None] | None = None) -> float:
        """Block until one request of about `tokens` tokens may go; returns the seconds waited."""
        t0 = self.clock()
        with self._cond:
            while True:
                now = self.clock()
                self._refill(now)
                need = self._wait_needed(now)
                if need <= 0:
                    if self.rpm:
                        self._req -= 1.0
                    if self.tpm:
                        self._tok -= tokens
                    waited = self.clock() - t0
                    self.waited_s += waited
                    return waited
                if sleep is not None:   # tests drive a fake clock
                    self._cond.release()
                    try:
                        sleep(need)
                    finally:
                        self._cond.acquire()
                else:
                    self._cond.wait(timeout=need)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the server reported the real usage."""
        if self.tpm and actual:
            with self._cond:
                self._tok -= actual - estimated

    def pause(self, seconds: float) -> None:
        with self._cond:
            self._paused_until = max(self._paused_until, self.clock() + min(max(0.0, seconds), self.max_pause_s))
            self._cond.notify_all()

    def observe_headers(self, headers: Any) -> None:
        """Adopt the server's limits and remaining budget (x-ratelimit-limit/remaining/reset-tokens|requests)."""
        if not headers:
            return
        get = headers.get
        with self._cond:
            now = self.clock()
            self._refill(now)
            lim_tok = _num(get("x-ratelimit-limit-tokens"))
            if lim_tok:
                self.tpm = lim_tok
            lim_req = _num(get("x-ratelimit-limit-requests"))
            if lim_req and self.rpm_from_headers:
                self.rpm = lim_req
            rem_tok = _num(get("x-ratelimit-remaining-tokens"))
            if rem_tok is not None and self.tpm:
                self._tok = min(self._tok, rem_tok)
            rem_req = _num(get("x-ratelimit-remaining-requests"))
            if rem_req is not None and rem_req <= 0:
                reset = parse_duration(get("x-ratelimit-reset-requests"))
                if reset:
                    self._paused_until = max(self._paused_until, now + min(reset, self.max_pause_s))


def _num(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
