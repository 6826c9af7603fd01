"""Polite HTTP: one connection, a per-host delay between requests, retries with backoff honouring Retry-After
(capped by max_wait_s), redirects followed by hand through the host check, and a time limit on the whole
request (a server dripping one byte a second cannot keep a read timeout alive forever)."""
from __future__ import annotations

import contextlib
import email.utils
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .config import ScrapeConfig
from .errors import ScrapeError, say
from .hosts import HostPolicy, is_loopback

ARXIV_POLICY_DELAY_S = 3.0
RETRY_STATUSES = (429, 500, 502, 503, 504)


# ----------------------------------------------------------------------------------------------- politeness
@dataclass
class Throttle:
    """Spaces requests per host: each starts at least `delay` after the previous one to that host ended."""

    delay_s: float
    sleep: Callable[[float], None] = time.sleep
    last_end: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def delay_for(self, host: str) -> float:
        return self.delay_s if is_loopback(host) else max(self.delay_s, ARXIV_POLICY_DELAY_S)

    def wait(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        last = self.last_end.get(host)
        if last is not None:
            remaining = self.delay_for(host) - (time.monotonic() - last)
            if remaining > 0:
                self.sleep(remaining)
        self.count += 1

    def done(self, url: str) -> None:
        self.last_end[urlsplit(url).hostname or ""] = time.monotonic()


def user_agent(cfg: ScrapeConfig) -> str:
    """The configured User-Agent, plus a contact address from $ARXIV_CONTACT when set (arXiv likes one)."""
    contact = os.environ.get("ARXIV_CONTACT", "").strip()
    return f"{cfg.user_agent} mailto:{contact}" if contact else cfg.user_agent


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_wait(cfg: ScrapeConfig, attempt: int, status: int, retry_after: str | None, url: str) -> float:
    """How long to wait before retry `attempt` (1-based); raises ScrapeError when retries are spent or the
    server asks for more than max_wait_s."""
    if attempt > cfg.max_retries:
        raise ScrapeError(f"HTTP {status} after {cfg.max_retries + 1} attempts")
    asked = retry_after_seconds(retry_after)
    if asked is not None and asked > cfg.max_wait_s:
        raise ScrapeError(f"HTTP {status}: server asked to wait {asked:.0f}s (> max_wait_s={cfg.max_wait_s:g})")
    wait = asked if asked is not None else cfg.backoff_s * 2 ** (attempt - 1)
    say(f"HTTP {status} from {url}: retry {attempt}/{cfg.max_retries} in {wait:.1f}s")
    return wait


# ----------------------------------------------------------------------------------------------- time limit
class AbortableAdapter(HTTPAdapter):
    """An HTTPAdapter that remembers its live connections so `abort()` can shut their sockets from another
    thread: a blocked read (headers or body) then ends at once instead of after the server's last byte."""

    def __init__(self, **kwargs) -> None:
        self.live: weakref.WeakSet = weakref.WeakSet()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        live = self.live

        class Conn(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                live.add(self)

        class TLSConn(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                live.add(self)

        class Pool(HTTPConnectionPool):
            ConnectionCls = Conn

        class TLSPool(HTTPSConnectionPool):
            ConnectionCls = TLSConn

        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TLSPool}

    def abort(self) -> None:
        for conn in list(self.live):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class Deadline:
    """Calls `abort` once `seconds` have passed, unless cancelled first; `expired` says whether it fired."""

    def __init__(self, seconds: float, abort: Callable[[], None]):
        self.seconds, self.expired = seconds, False
        self._abort = abort
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.expired = True
        self._abort()

    def cancel(self) -> None:
        self._timer.cancel()

    def error(self) -> ScrapeError:
        return ScrapeError(f"no complete answer within max_request_s={self.seconds:g}s (server too slow)")


# ----------------------------------------------------------------------------------------------- the client
class HttpClient:
    """requests with one pooled connection, the throttle, retries, the host check on every hop and a time
    limit on every request. `open(url)` is a context manager yielding the final 200-or-other response."""

    def __init__(self, cfg: ScrapeConfig, throttle: Throttle, policy: HostPolicy):
        self.cfg, self.throttle, self.policy = cfg, throttle, policy
        self.session = requests.Session()
        self.adapter = AbortableAdapter(pool_connections=1, pool_maxsize=1, pool_block=True)
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        self.session.headers["User-Agent"] = user_agent(cfg)

    def close(self) -> None:
        self.session.close()

    @contextlib.contextmanager
    def open(self, url: str, what: str = "", max_redirects: int = 5) -> Iterator[requests.Response]:
        """The response to GET `url` (body not read yet); reading it inside the block counts against
        max_request_s. Network errors and the time limit become ScrapeError."""
        resp, deadline, final_url = self._send(url, what, max_redirects)
        try:
            yield resp
            if deadline.expired:
                raise deadline.error()
        except requests.RequestException as e:
            if deadline.expired:
                raise deadline.error() from e
            raise ScrapeError(f"download interrupted: {type(e).__name__}") from e
        finally:
            deadline.cancel()
            resp.close()
            self.throttle.done(final_url)

    def get_text(self, url: str, what: str = "") -> str:
        """The body of a 200 answer as text (ScrapeError otherwise)."""
        with self.open(url, what) as resp:
            if resp.status_code != 200:
                raise ScrapeError(f"HTTP {resp.status_code}")
            return resp.text

    def _send(self, url: str, what: str, max_redirects: int) -> tuple[requests.Response, Deadline, str]:
        """GET following redirects by hand (each hop must pass the host check), retrying 429/5xx and network
        errors; a request over max_request_s is not retried."""
        attempt = hops = 0
        while True:
            self.policy.check(url, what)
            self.throttle.wait(url)
            deadline = Deadline(self.cfg.max_request_s, self.adapter.abort)
            try:
                resp = self.session.get(url, stream=True, allow_redirects=False, timeout=self.cfg.timeout_s)
            except requests.RequestException as e:
                deadline.cancel()
                self.throttle.done(url)
                if deadline.expired:
                    raise deadline.error() from e
                attempt += 1
                if attempt > self.cfg.max_retries:
                    raise ScrapeError(f"network error after {attempt} attempts: {type(e).__name__}: {e}") from e
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
                continue
            if resp.is_redirect or resp.status_code in RETRY_STATUSES:
                deadline.cancel()
                resp.close()
                self.throttle.done(url)
                if resp.is_redirect:
                    hops += 1
                    if hops > max_redirects:
                        raise ScrapeError(f"more than {max_redirects} redirects")
                    url = urljoin(url, resp.headers.get("Location", ""))
                    what = f"redirect{' of ' + what if what else ''}"
                else:
                    attempt += 1
                    time.sleep(retry_wait(self.cfg, attempt, resp.status_code, resp.headers.get("Retry-After"), url))
                continue
            return resp, deadline, url
