"""A total time limit on one HTTP request: connect, send, wait and read, all together.

httpx's timeouts are per operation: a server that sends one byte a second never trips a 3 s read timeout
and keeps the request alive for as long as it likes. `DeadlineTransport(total_s)` is an httpx transport whose
network streams give every socket operation only the time left until the request's deadline, so the
request ends with a timeout `total_s` after it started, however the server paces its bytes. Used by both
remote backends (the groq client takes it through `http_client`).
"""
from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

_now = threading.local()   # the deadline of the request this thread is making (one at a time per thread)


def _left(timeout: float | None, exc: type[Exception]) -> float | None:
    """The per-operation timeout cut to what is left of the request's total time; past it, `exc`."""
    deadline = getattr(_now, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc(f"the request's total time limit of {_now.total_s:g} s was reached")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# as many connections as the groq client allows (httpcore's own default of 10 would cap 25 workers at 10)
CONNECTION_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=5.0)


# A chat completion of a few thousand tokens is a few KB; no reply is allowed more than this, decoded.
MAX_REPLY_BYTES = 8 * 1024 * 1024
# Anything else through the same client (a batch's results file: thousands of replies) is bounded too.
MAX_FILE_BYTES = 2 * 1024**3


class ReplyTooLarge(httpx.DecodingError):
    """A reply body (after decompression) over the cap: reading stopped there."""


class _CappedStream(httpx.SyncByteStream):
    """The response body decoded here (gzip/deflate) and counted: past `cap` decoded bytes it raises
    ReplyTooLarge, so a small compressed "bomb" never grows in memory; broken compression is a DecodingError."""

    def __init__(self, inner: Any, encoding: str, cap: int):
        self._inner, self._cap, self._n = inner, cap, 0
        self._z = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None
        self._encoding = encoding

    def _count(self, chunk: bytes) -> bytes:
        self._n += len(chunk)
        if self._n > self._cap:
            raise ReplyTooLarge(f"reply body over {self._cap / 2**20:g} MiB (decoded): not read further")
        return chunk

    def _decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._z.decompress(data, self._cap - self._n + 1)
            yield self._count(out)
            while self._z.unconsumed_tail:
                yield self._count(self._z.decompress(self._z.unconsumed_tail, self._cap - self._n + 1))
        except zlib.error as e:
            raise httpx.DecodingError(f"broken {self._encoding} reply body ({e})") from None

    def __iter__(self) -> Iterator[bytes]:
        for data in self._inner:
            if self._z is None:
                yield self._count(data)
            else:
                yield from self._decode(data)
        if self._z is not None:
            try:
                yield self._count(self._z.flush())
            except zlib.error as e:
                raise httpx.DecodingError(f"broken {self._encoding} reply body ({e})") from None
            if not self._z.eof:
                raise httpx.DecodingError(f"truncated {self._encoding} reply body")

    def close(self) -> None:
        self._inner.close()


def capped_response(response: httpx.Response, cap: int) -> httpx.Response:
    """`response` whose body is decoded here under `cap` bytes (the content-encoding header removed, so httpx
    does not decode again). An encoding other than gzip/deflate/identity is refused as a DecodingError."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        response.close()
        raise httpx.DecodingError(f"reply body in an unsupported content-encoding {encoding!r}")
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers,
                          stream=_CappedStream(response.stream, encoding, cap), extensions=response.extensions)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx.HTTPTransport whose every request (headers and body) must finish within `total_s` seconds, with a
    reply body of at most `max_bytes` decoded (only gzip/deflate asked for, and decoded under that cap)."""

    def __init__(self, total_s: float, limits: httpx.Limits = CONNECTION_LIMITS, max_bytes: int | None = None):
        super().__init__(limits=limits)
        self.total_s = total_s
        self.max_bytes = max_bytes
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(),
                                             max_connections=limits.max_connections,
                                             max_keepalive_connections=limits.max_keepalive_connections,
                                             keepalive_expiry=limits.keepalive_expiry,
                                             network_backend=_DeadlineBackend())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _now.deadline, _now.total_s = time.monotonic() + self.total_s, self.total_s
        request.headers["accept-encoding"] = "gzip, deflate"
        chat = request.url.path.rstrip("/").endswith("/chat/completions")
        cap = (self.max_bytes or MAX_REPLY_BYTES) if chat else MAX_FILE_BYTES   # batch result files are larger
        return capped_response(super().handle_request(request), cap)


def deadline_client(total_s: float, max_bytes: int | None = None, **kwargs: Any) -> httpx.Client:
    """An httpx.Client whose requests each end within `total_s` seconds (per-operation timeouts too), with
    replies capped at `max_bytes` decoded (None: MAX_REPLY_BYTES)."""
    return httpx.Client(transport=DeadlineTransport(total_s, max_bytes=max_bytes), timeout=total_s, **kwargs)
