"""Small hostile HTTP servers on loopback for the scraper's tests: each path answers with a function, so a
test states exactly what the hostile site does (a "next" link to file://, a redirect to another address, a
body dripped one byte at a time, a gzip-encoded PDF, a bad Atom entry...). Every request is logged."""
from __future__ import annotations

import gzip
import html
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Route = Callable[[BaseHTTPRequestHandler], None]


class HostileServer:
    """`routes` maps a path (without query) to a function that answers it; unknown paths get 404.
    `host` may be any loopback address (127.0.0.2 plays "another address")."""

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = dict(routes or {})
        self.host = host
        self.paths: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def __enter__(self) -> HostileServer:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                site.paths.append(self.path)
                route = site.routes.get(urlsplit(self.path).path)
                try:
                    if route is None:
                        send(self, 404, b"not found", "text/plain")
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


# ----------------------------------------------------------------------------------------------- answers
def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
         headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def page(body: str, title: str = "Search | arXiv e-print repository") -> Route:
    return lambda h: send(h, 200, f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head>"
                                  f"<body>{body}</body></html>".encode(), "text/html; charset=utf-8")


def redirect(location: str, status: int = 302) -> Route:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return answer


def pdf(data: bytes, headers: dict[str, str] | None = None) -> Route:
    return lambda h: send(h, 200, data, "application/pdf", headers)


def gzipped_pdf(data: bytes) -> Route:
    """The PDF gzip-compressed with Content-Encoding: gzip; Content-Length counts the compressed bytes."""
    packed = gzip.compress(data)
    return lambda h: send(h, 200, packed, "application/pdf", {"Content-Encoding": "gzip"})


def drip(body: bytes, every_s: float, ctype: str = "application/pdf", headers_too: bool = False) -> Route:
    """Answers one byte every `every_s` seconds (the status line and headers too when `headers_too`), so
    no single read ever waits long enough to time out."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        if headers_too:
            stream = head + body
        else:
            h.wfile.write(head)
            h.wfile.flush()
            stream = body
        for i in range(len(stream)):
            h.wfile.write(stream[i:i + 1])
            h.wfile.flush()
            time.sleep(every_s)
    return answer


def atom(body: bytes) -> Route:
    return lambda h: send(h, 200, body, "application/atom+xml; charset=utf-8")


# ----------------------------------------------------------------------------------------------- markup
def search_result(abs_href: str, pdf_href: str, shown_id: str, title: str) -> str:
    """One `li.arxiv-result` as arxiv.org's search pages have it."""
    esc = html.escape
    return (f'<li class="arxiv-result"><div><p class="list-title"><a href="{esc(abs_href)}">arXiv:{esc(shown_id)}'
            f'</a> <span>[<a href="{esc(pdf_href)}">pdf</a>]</span></p></div>'
            f'<p class="title is-5">{esc(title)}</p><p class="authors"><a href="#">Ann Author</a></p>'
            f'<p class="abstract"><span class="abstract-full">An abstract about LLMs.</span></p>'
            f'<p class="is-size-7">Submitted 2 May, 2024; originally announced May 2024.</p></li>')


def search_page(results: list[str], next_href: str | None = None) -> str:
    nxt = f'<a class="pagination-next" href="{html.escape(next_href)}">Next</a>' if next_href else ""
    return f'<nav class="pagination">{nxt}</nav><ol>{"".join(results)}</ol>'


def atom_feed(entries: list[tuple[str, str]], total: int | None = None) -> bytes:
    """An export-API answer whose entries are (id URL, pdf URL)."""
    items = "".join(
        f'<entry><id>{html.escape(i)}</id><published>2024-05-02T12:00:00Z</published><title>Paper {n}</title>'
        f'<summary>About LLMs.</summary><author><name>Ann Author</name></author>'
        f'<link href="{html.escape(i)}" rel="alternate" type="text/html"/>'
        f'<link title="pdf" href="{html.escape(p)}" rel="related" type="application/pdf"/>'
        f'<category term="cs.CL" scheme="http://arxiv.org/schemas/atom"/></entry>'
        for n, (i, p) in enumerate(entries))
    n = len(entries) if total is None else total
    return (f'<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f'<opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{n}'
            f'</opensearch:totalResults>{items}</feed>').encode()


def small_pdf(text: str = "hello") -> bytes:
    """A minimal file that passes the scraper's PDF checks (%PDF- header, %%EOF end marker)."""
    return (f"%PDF-1.4\n1 0 obj\n<< /Title ({text}) >>\nendobj\n" + "% padding\n" * 200 + "%%EOF\n").encode()
