"""A local arXiv look-alike on 127.0.0.1: search result pages (arxiv.org markup, pagination), `/list/`
listing pages, abs pages, PDFs and the export API (Atom).

    with DemoSite(cache_dir="data/cache/demo_site") as site:
        url = site.search_url("llm", date_from="2024-04-18")
        ...                      # site.requests: every request the server saw, with its arrival time

The demo profile's data source. The tests subclass it (tests/support/fake_arxiv.py) to add the faults a real crawl
meets, through three hooks: `DemoSite.Handler`, `Handler.intercept` and `Handler.send_pdf`.
"""
from __future__ import annotations

import html
import re
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from ..arxiv_ids import build_search_url
from .corpus import DemoPaper, load_corpus
from .pdf import cached_pdf

CATEGORY_NAMES = {
    "cs.CL": "Computation and Language", "cs.LG": "Machine Learning", "cs.AI": "Artificial Intelligence",
    "cs.IR": "Information Retrieval", "stat.ML": "Machine Learning (stat)", "cs.SE": "Software Engineering",
    "cs.DC": "Distributed, Parallel, and Cluster Computing",
}


@dataclass
class RequestRecord:
    """One request as the server saw it (time.monotonic() on arrival)."""

    t: float
    method: str
    path: str
    status: int = 0
    user_agent: str = ""


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _arxiv_date(iso: str) -> str:
    """'2024-05-02' -> '2 May, 2024' (arXiv search results)."""
    d = date.fromisoformat(iso)
    return f"{d.day} {d.strftime('%B')}, {d.year}"


def _matches(paper: DemoPaper, terms: list[str]) -> bool:
    hay = " ".join([paper.title, paper.abstract, " ".join(paper.authors), " ".join(paper.categories)]).lower()
    return all(t.lower() in hay for t in terms)


class DemoSite:
    """The server. Start/stop it explicitly or use it as a context manager; `base_url` is set once started."""

    Handler: ClassVar[type]      # the request handler class (set below, after it is defined)

    def __init__(self, cache_dir: str | Path | None = None, papers: list[DemoPaper] | None = None,
                 page_size: int = 25):
        self.papers = papers if papers is not None else load_corpus()
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "nbutils" / "demo_site"
        self.page_size = page_size
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> DemoSite:
        if self._server:
            return self
        self.pdf_paths = {p.base_id: cached_pdf(p, self.cache_dir) for p in self.papers}
        site = self

        class Handler(self.Handler):
            demo = site

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-arxiv", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            if self._thread:
                self._thread.join(timeout=5)

    def __enter__(self) -> DemoSite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- URLs for callers
    def search_url(self, query: str = "llm", date_from: str = "", date_to: str = "", size: int | None = None) -> str:
        return build_search_url(self.base_url, query, date_from, date_to, size or self.page_size)

    def list_url(self, category: str = "cs.CL", show: int | None = None) -> str:
        return f"{self.base_url}/list/{category}/pastweek?skip=0&show={show or self.page_size}"

    def api_url(self) -> str:
        return f"{self.base_url}/api/query"

    def paper(self, pid: str) -> DemoPaper | None:
        base = re.sub(r"v\d+$", "", pid)
        return next((p for p in self.papers if p.base_id == base), None)

    def hits(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(prefix))

    def _log(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    # ---------------------------------------------------------------- selection
    def entries(self, terms: list[str], date_from: str, date_to: str, category: str = "") -> list[DemoPaper]:
        """Papers matching every term, submitted in the range, in the category; newest first."""
        out = []
        for p in self.papers:
            if terms and not _matches(p, terms):
                continue
            if date_from and p.submitted < date_from or date_to and p.submitted > date_to:
                continue
            if category and not any(c == category or c.split(".")[0] == category for c in p.categories):
                continue
            out.append(p)
        return sorted(out, key=lambda p: p.submitted, reverse=True)

    def page_of(self, entries: list, start: int, size: int) -> list:
        return entries[start:start + size]

    # ---------------------------------------------------------------- links
    def _href(self, path: str) -> str:
        """Search pages link absolutely, as arxiv.org's do (the /list/ pages use relative links)."""
        return f"{self.base_url}{path}"

    @staticmethod
    def _ident(p) -> tuple[str, str]:
        """(id shown in listings, i.e. without version, as arXiv does; raw id for links)."""
        return p.base_id, p.base_id


class Handler(BaseHTTPRequestHandler):
    demo: DemoSite
    server_version = "DemoArxiv/1.0"

    def log_message(self, *args) -> None:   # keep test output quiet
        pass

    # ------------------------------------------------------------ plumbing
    def do_GET(self) -> None:  # noqa: N802
        rec = RequestRecord(time.monotonic(), "GET", self.path, user_agent=self.headers.get("User-Agent", ""))
        self.demo._log(rec)
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        route = "/" + path.strip("/").split("/")[0] if path != "/" else "/"
        if self.intercept(rec, route, path):
            return
        try:
            if path in ("/search", "/search/", "/search/advanced"):
                self._send_html(rec, self._search_page(query))
            elif path.startswith("/list/"):
                self._send_html(rec, self._list_page(path, query))
            elif path.startswith("/abs/"):
                self._abs(rec, path[len("/abs/"):])
            elif path.startswith("/pdf/"):
                self._pdf(rec, path[len("/pdf/"):])
            elif path == "/api/query":
                self._send(rec, 200, self._atom(query).encode(), "application/atom+xml; charset=utf-8")
            elif path == "/":
                self._send_html(rec, _page("arXiv demo", f'<p><a href="{self.demo.search_url()}">search</a></p>'))
            else:
                self._error(rec, 404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def intercept(self, rec: RequestRecord, route: str, path: str) -> bool:
        """Hook for the tests' fault switches: answer the request here and return True to skip the route."""
        return False

    def _send(self, rec: RequestRecord, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None, length: int | None = None) -> None:
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_html(self, rec: RequestRecord, text: str) -> None:
        self._send(rec, 200, text.encode("utf-8"), "text/html; charset=utf-8")

    def _error(self, rec: RequestRecord, status: int, msg: str, headers: dict[str, str] | None = None) -> None:
        self._send(rec, status, _page(f"{status} {msg}", f"<h1>{status} {_esc(msg)}</h1>").encode(),
                   "text/html; charset=utf-8", headers)

    # ------------------------------------------------------------ search results (arxiv.org/search markup)
    def _search_page(self, q: dict[str, str]) -> str:
        d = self.demo
        term = q.get("terms-0-term", q.get("query", ""))
        size = int(q.get("size") or d.page_size)
        start = int(q.get("start") or 0)
        entries = d.entries(term.split(), q.get("date-from_date", ""), q.get("date-to_date", ""))
        if not entries:
            body = (f'<h1 class="title is-clearfix">Showing 0 results</h1>'
                    f'<p class="is-size-4 has-text-warning">Sorry, your query for all: {_esc(term)} '
                    f'produced no results.</p>')
            return _page("Search | arXiv e-print repository", body)
        page = d.page_of(entries, start, size)
        items = "\n".join(self._result_li(p) for p in page)
        nav = self._pagination(q, start, size, len(entries))
        body = (f'<h1 class="title is-clearfix">Showing {start + 1}&ndash;{min(start + size, len(entries))} of '
                f'{len(entries)} results for all: <span class="mathjax">{_esc(term)}</span></h1>\n{nav}\n'
                f'<ol class="breathe-horizontal" start="{start + 1}">\n{items}\n</ol>\n{nav}')
        return _page("Search | arXiv e-print repository", body)

    def _result_li(self, p) -> str:
        shown, raw = self.demo._ident(p)
        abs_href, pdf_href = self.demo._href(f"/abs/{raw}"), self.demo._href(f"/pdf/{raw}")
        tags = "".join(
            f'<span class="tag is-small {"is-link" if i == 0 else "is-grey"} tooltip is-tooltip-top" '
            f'data-tooltip="{_esc(CATEGORY_NAMES.get(c, c))}">{_esc(c)}</span>\n' for i, c in enumerate(p.categories))
        authors = ", ".join(f'<a href="/search/?searchtype=author&amp;query={quote(a)}">{_esc(a)}</a>'
                            for a in p.authors)
        short = _esc(p.abstract[:180].rsplit(" ", 1)[0])
        if p.version > 1:
            dates = (f"{_arxiv_date(p.updated)}; <span class=\"has-text-black-bis has-text-weight-semibold\">"
                     f"v1</span> submitted {_arxiv_date(p.submitted)}")
        else:
            dates = _arxiv_date(p.submitted)
        announced = date.fromisoformat(p.submitted).strftime("%B %Y")
        comments = (f'<p class="comments is-size-7"><span class="has-text-black-bis has-text-weight-semibold">'
                    f'Comments:</span> <span class="has-text-grey-dark mathjax">{_esc(p.comments)}</span></p>'
                    if p.comments else "")
        return f"""<li class="arxiv-result">
  <div class="is-marginless">
    <p class="list-title is-inline-block"><a href="{_esc(abs_href)}">arXiv:{_esc(shown)}</a>
      <span>&nbsp;[<a href="{_esc(pdf_href)}">pdf</a>, <a href="{_esc(self.demo._href('/format/' + raw))}">other</a>]&nbsp;</span>
    </p>
    <div class="tags is-inline-block">
      {tags}</div>
  </div>
  <p class="title is-5 mathjax">
      {_esc(p.title)}
  </p>
  <p class="authors">
    <span class="has-text-black-bis has-text-weight-semibold">Authors:</span>
    {authors}
  </p>
  <p class="abstract mathjax">
    <span class="has-text-black-bis has-text-weight-semibold">Abstract</span>:
    <span class="abstract-short has-text-grey-dark mathjax" style="display: inline;">{short}&hellip;
      <a class="is-size-7" style="white-space: nowrap;">&#9661; More</a></span>
    <span class="abstract-full has-text-grey-dark mathjax" style="display: none;">
      {_esc(p.abstract)}
      <a class="is-size-7" style="white-space: nowrap;">&#9651; Less</a>
    </span>
  </p>
  <p class="is-size-7"><span class="has-text-black-bis has-text-weight-semibold">Submitted</span>
    {dates};
    <span class="has-text-black-bis has-text-weight-semibold">originally announced</span> {announced}.
  </p>
  {comments}
</li>"""

    def _pagination(self, q: dict[str, str], start: int, size: int, total: int) -> str:
        def link(s: int) -> str:
            return _esc("/search/advanced?" + urlencode({**q, "start": str(s)}))

        prev = (f'<a href="{link(max(0, start - size))}" class="pagination-previous">Previous</a>'
                if start > 0 else '<a href="" class="pagination-previous is-invisible">Previous</a>')
        nxt = (f'<a href="{link(start + size)}" class="pagination-next">Next</a>'
               if start + size < total else '<a href="" class="pagination-next is-invisible">Next</a>')
        pages = "".join(
            f'<li><a href="{link(s)}" class="pagination-link{" is-current" if s == start else ""}" '
            f'aria-label="Goto page {s // size + 1}">{s // size + 1}</a></li>' for s in range(0, total, size))
        return (f'<nav class="pagination is-small is-centered breathe-horizontal" role="navigation" '
                f'aria-label="pagination">{prev}{nxt}<ul class="pagination-list">{pages}</ul></nav>')

    # ------------------------------------------------------------ /list/ pages (relative links, dl#articles)
    def _list_page(self, path: str, q: dict[str, str]) -> str:
        d = self.demo
        category = path.split("/")[2] if len(path.split("/")) > 2 else ""
        skip, show = int(q.get("skip") or 0), int(q.get("show") or d.page_size)
        entries = d.entries([], "", "", category)
        if not entries:
            return _page(f"{category} recent", f"<h1>{_esc(category)}</h1><p>No updates for this time period.</p>")
        page = d.page_of(entries, skip, show)
        items = []
        for i, p in enumerate(page, start=skip + 1):
            shown, raw = d._ident(p)
            subjects = "; ".join(
                (f'<span class="primary-subject">{_esc(CATEGORY_NAMES.get(c, c))} ({_esc(c)})</span>' if j == 0
                 else f"{_esc(CATEGORY_NAMES.get(c, c))} ({_esc(c)})") for j, c in enumerate(p.categories))
            authors = ", ".join(f'<a href="/a/{quote(a)}">{_esc(a)}</a>' for a in p.authors)
            items.append(f"""<dt>
  <a name="item{i}">[{i}]</a>
  <a href="/abs/{_esc(raw)}" title="Abstract" id="{_esc(raw)}">arXiv:{_esc(shown)}</a>
  [<a href="/pdf/{_esc(raw)}" title="Download PDF" id="pdf-{_esc(raw)}">pdf</a>, <a href="/format/{_esc(raw)}" title="Other formats">other</a>]
</dt>
<dd>
  <div class="meta">
    <div class="list-title mathjax"><span class="descriptor">Title:</span>
      {_esc(p.title)}
    </div>
    <div class="list-authors">{authors}</div>
    <div class="list-subjects"><span class="descriptor">Subjects:</span> {subjects}</div>
    <p class="mathjax">{_esc(p.abstract)}</p>
  </div>
</dd>""")
        spans = []
        for s in range(0, len(entries), show):
            label = f"{s + 1}-{min(s + show, len(entries))}"
            spans.append(f"<span>{label}</span>" if s == skip else
                         f'<a href="/list/{_esc(category)}/pastweek?skip={s}&amp;show={show}">{label}</a>')
        paging = f'<div class="paging">Total of {len(entries)} entries : {" ".join(spans)}</div>'
        body = (f'<h1>{_esc(CATEGORY_NAMES.get(category, category))}</h1>{paging}<dl id="articles">'
                f'<h3>Recent submissions</h3>{"".join(items)}</dl>{paging}')
        return _page(f"{category} recent", body)

    # ------------------------------------------------------------ abs pages
    def _abs(self, rec: RequestRecord, pid: str) -> None:
        p = self.demo.paper(pid)
        if p is None:
            self._error(rec, 404, "Article not found")
            return
        history = "<br/>".join(
            f"<strong>[v{i}]</strong> {date.fromisoformat(v).strftime('%a, %-d %b %Y')} 12:00:00 UTC (120 KB)"
            for i, v in enumerate(p.versions, 1))
        subjects = "; ".join(
            (f'<span class="primary-subject">{_esc(CATEGORY_NAMES.get(c, c))} ({_esc(c)})</span>' if j == 0
             else f"{_esc(CATEGORY_NAMES.get(c, c))} ({_esc(c)})") for j, c in enumerate(p.categories))
        body = f"""<div id="abs">
<h1 class="title mathjax"><span class="descriptor">Title:</span>{_esc(p.title)}</h1>
<div class="authors"><span class="descriptor">Authors:</span>{", ".join(f'<a href="/a/{quote(a)}">{_esc(a)}</a>' for a in p.authors)}</div>
<blockquote class="abstract mathjax"><span class="descriptor">Abstract:</span>{_esc(p.abstract)}</blockquote>
<table summary="Additional metadata"><tr><td class="tablecell label">Subjects:</td><td class="tablecell subjects">{subjects}</td></tr></table>
<div class="extra-services"><ul><li><a href="/pdf/{p.id}" class="abs-button download-pdf">View PDF</a></li></ul></div>
<div class="submission-history"><h2>Submission history</h2>From: {_esc(p.authors[0])}<br/>{history}</div>
</div>"""
        self._send_html(rec, _page(f"[{p.id}] {p.title}", body, meta={
            "citation_title": p.title, "citation_arxiv_id": p.base_id,
            "citation_date": p.submitted.replace("-", "/"), "citation_pdf_url": f"{self.demo.base_url}/pdf/{p.id}"}))

    # ------------------------------------------------------------ PDFs
    def _pdf(self, rec: RequestRecord, raw: str) -> None:
        d = self.demo
        pid = raw[:-4] if raw.endswith(".pdf") else raw
        p = d.paper(pid)
        m = re.search(r"v(\d+)$", pid)
        if p is None or (m and not 1 <= int(m.group(1)) <= p.version):
            self._error(rec, 404, "Not Found")
            return
        served_id = pid if m else p.id
        headers = {"Content-Disposition": f'inline; filename="{served_id}.pdf"'}
        self.send_pdf(rec, p, bool(m), d.pdf_paths[p.base_id].read_bytes(), headers)

    def send_pdf(self, rec: RequestRecord, paper: DemoPaper, versioned: bool, data: bytes,
                 headers: dict[str, str]) -> None:
        """Hook for the tests' fault switches: send one PDF (`versioned`: the URL named a version)."""
        self._send(rec, 200, data, "application/pdf", headers)

    # ------------------------------------------------------------ export API (Atom)
    def _atom(self, q: dict[str, str]) -> str:
        d = self.demo
        terms, date_from, date_to = parse_api_query(q.get("search_query", ""))
        start, max_results = int(q.get("start") or 0), int(q.get("max_results") or 10)
        entries = [e for e in d.entries(terms, date_from, date_to) if isinstance(e, DemoPaper)]  # papers only
        if q.get("sortOrder") == "ascending":
            entries = entries[::-1]
        page = d.page_of(entries, start, max_results)
        return atom_feed(page, len(entries), start, max_results, q.get("search_query", ""), base=d.base_url)


DemoSite.Handler = Handler  # what start() serves with; a subclass of DemoSite may set its own


def parse_api_query(search_query: str) -> tuple[list[str], str, str]:
    """`all:llm AND submittedDate:[202404180000 TO 202412312359]` -> (terms, from ISO date, to ISO date)."""
    terms: list[str] = []
    date_from = date_to = ""
    m = re.search(r"submittedDate:\[(\d{8})\d*\s+TO\s+(\d{8})\d*\]", search_query)
    if m:
        date_from = f"{m.group(1)[:4]}-{m.group(1)[4:6]}-{m.group(1)[6:]}"
        date_to = f"{m.group(2)[:4]}-{m.group(2)[4:6]}-{m.group(2)[6:]}"
        search_query = search_query.replace(m.group(0), "")
    for tok in re.findall(r"(?:all|ti|abs|au):(\"[^\"]+\"|\S+)", search_query):
        terms.extend(tok.strip('"').split())
    return terms, date_from, date_to


def atom_feed(papers: list[DemoPaper], total: int, start: int, per_page: int, search_query: str,
              base: str = "http://arxiv.org") -> str:
    """An export-API answer in arXiv's Atom format (namespaces, opensearch counts, links, categories);
    `base` is the site the entry links point at (arxiv.org for the real API, the demo site for its own)."""
    entries = []
    for p in papers:
        authors = "".join(f"\n    <author>\n      <name>{_esc(a)}</name>\n    </author>" for a in p.authors)
        cats = "".join(f'\n    <category term="{c}" scheme="http://arxiv.org/schemas/atom"/>' for c in p.categories)
        comment = (f'\n    <arxiv:comment xmlns:arxiv="http://arxiv.org/schemas/atom">{_esc(p.comments)}</arxiv:comment>'
                   if p.comments else "")
        entries.append(f"""  <entry>
    <id>{base}/abs/{p.id}</id>
    <updated>{p.updated}T12:00:00Z</updated>
    <published>{p.submitted}T12:00:00Z</published>
    <title>{_esc(p.title)}</title>
    <summary>  {_esc(p.abstract)}
</summary>{authors}{comment}
    <link href="{base}/abs/{p.id}" rel="alternate" type="text/html"/>
    <link title="pdf" href="{base}/pdf/{p.id}" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="{p.categories[0]}" scheme="http://arxiv.org/schemas/atom"/>{cats}
  </entry>""")
    now = datetime.now().strftime("%Y-%m-%dT00:00:00-05:00")
    qs = _esc(urlencode({"search_query": search_query, "id_list": "", "start": start, "max_results": per_page}))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <link href="http://arxiv.org/api/query?{qs}" rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: {qs}</title>
  <id>http://arxiv.org/api/demo</id>
  <updated>{now}</updated>
  <opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{total}</opensearch:totalResults>
  <opensearch:startIndex xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{start}</opensearch:startIndex>
  <opensearch:itemsPerPage xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{per_page}</opensearch:itemsPerPage>
{chr(10).join(entries)}
</feed>
"""


def _page(title: str, body: str, meta: dict[str, str] | None = None) -> str:
    metas = "".join(f'<meta name="{k}" content="{_esc(v)}"/>' for k, v in (meta or {}).items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/><title>{_esc(title)}</title>'
            f'<link rel="icon" href="data:,"/>{metas}</head><body><main><div class="content">{body}</div></main>'
            f"</body></html>")
