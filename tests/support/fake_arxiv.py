"""The demo arXiv site with fault switches: the faults a real crawl meets (error statuses, 429 with
Retry-After, captcha pages, truncated/oversize/mislabelled PDFs, offsite redirects, hostile file names and
ids, duplicated entries, relative links, no Content-Disposition). Test-only; the library's DemoSite serves."""
from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from nbutils.demo_site import DemoPaper, DemoSite
from nbutils.demo_site.server import Handler, RequestRecord, _page

PDF_FAULTS = ("404", "500", "503_once", "429_once", "not_pdf", "html_as_pdf", "truncated", "redirect_offsite",
              "redirect_same_host", "hostile_name", "oversize")
PAGE_FAULTS = ("429_once", "500", "503_once")
OFFSITE = "http://offsite.invalid"


@dataclass
class ExtraEntry:
    """A listing entry that is not a demo paper (e.g. a hostile id); its links point at `/pdf/<base_id>`."""

    base_id: str
    title: str = "An entry with a hostile identifier"
    authors: tuple[str, ...] = ("Mallory Example",)
    abstract: str = "This entry exists to test that identifiers from a listing are never trusted as paths (LLM)."
    submitted: str = "2024-05-01"
    categories: tuple[str, ...] = ("cs.CL",)
    comments: str = ""
    version: int = 1

    @property
    def updated(self) -> str:
        return self.submitted


class FaultyHandler(Handler):
    demo: FaultySite

    def intercept(self, rec: RequestRecord, route: str, path: str) -> bool:
        fault = self.demo.page_faults.get(route)
        if not fault:
            return False
        n = self.demo.count(f"page:{route}")
        if fault == "500":
            self._error(rec, 500, "Internal Server Error")
        elif fault == "503_once" and n == 1:
            self._error(rec, 503, "Service Unavailable")
        elif fault == "429_once" and n == 1:
            self._error(rec, 429, "Too Many Requests", {"Retry-After": str(self.demo.retry_after_s)})
        else:
            return False
        return True

    def send_pdf(self, rec: RequestRecord, paper: DemoPaper, versioned: bool, data: bytes,
                 headers: dict[str, str]) -> None:
        d = self.demo
        fault = d.pdf_faults.get(paper.base_id)
        headers = headers if d.content_disposition else {}
        n = d.count(f"pdf:{paper.base_id}")
        if fault == "404":
            self._error(rec, 404, "Not Found")
        elif fault == "500":
            self._error(rec, 500, "Internal Server Error")
        elif fault == "503_once" and n == 1:
            self._error(rec, 503, "Service Unavailable")
        elif fault == "429_once" and n == 1:
            self._error(rec, 429, "Too Many Requests", {"Retry-After": str(d.retry_after_s)})
        elif fault == "not_pdf":
            self._send(rec, 200, _page("Captcha", "<p>Please verify you are a human.</p>").encode(),
                       "text/html; charset=utf-8")
        elif fault == "html_as_pdf":
            self._send(rec, 200, b"<!DOCTYPE html><html><body>not a pdf</body></html>", "application/pdf", headers)
        elif fault == "truncated":
            self._send(rec, 200, data[: len(data) // 2], "application/pdf", headers)
        elif fault == "redirect_offsite":
            self._redirect(rec, 302, f"{OFFSITE}/pdf/{paper.id}")
        elif fault == "redirect_same_host" and not versioned:
            self._redirect(rec, 301, f"/pdf/{paper.id}")
        elif fault == "hostile_name":
            self._send(rec, 200, data, "application/pdf",
                       {"Content-Disposition": 'attachment; filename="../../../../tmp/evil v9.pdf"'})
        elif fault == "oversize":
            big = data[:-6] + b"\n" * int(d.oversize_mb * 1024 * 1024) + b"%%EOF\n"
            self._send(rec, 200, big, "application/pdf", headers)
        else:
            self._send(rec, 200, data, "application/pdf", headers)

    def _redirect(self, rec: RequestRecord, status: int, location: str) -> None:
        rec.status = status
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FaultySite(DemoSite):
    """DemoSite plus switches: pdf_faults {base id: PDF_FAULTS}, page_faults {"/search"|"/list"|"/abs"|"/api":
    PAGE_FAULTS}, duplicate_ids (the newest paper again on later pages), extra_entries (listed, not papers),
    link_style "relative", content_disposition False, retry_after_s, oversize_mb."""

    Handler = FaultyHandler

    def __init__(self, *args, link_style: str = "absolute", pdf_faults: dict[str, str] | None = None,
                 page_faults: dict[str, str] | None = None, duplicate_ids: bool = False,
                 extra_entries: Iterable[ExtraEntry] = (), retry_after_s: int = 1, oversize_mb: float = 3.0,
                 content_disposition: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if link_style not in ("absolute", "relative"):
            raise ValueError(f"link_style must be 'absolute' or 'relative', not {link_style!r}")
        for pid, kind in (pdf_faults or {}).items():
            if kind not in PDF_FAULTS:
                raise ValueError(f"unknown pdf fault {kind!r} for {pid}: expected one of {', '.join(PDF_FAULTS)}")
        for route, kind in (page_faults or {}).items():
            if kind not in PAGE_FAULTS:
                raise ValueError(f"unknown page fault {kind!r} for {route}: expected one of {', '.join(PAGE_FAULTS)}")
        self.link_style, self.pdf_faults, self.page_faults = link_style, dict(pdf_faults or {}), dict(page_faults or {})
        self.duplicate_ids, self.extra_entries = duplicate_ids, list(extra_entries)
        self.retry_after_s, self.oversize_mb, self.content_disposition = retry_after_s, oversize_mb, content_disposition
        self._hits: dict[str, int] = {}
        self._hits_lock = threading.Lock()

    def count(self, key: str) -> int:
        with self._hits_lock:
            self._hits[key] = self._hits.get(key, 0) + 1
            return self._hits[key]

    def entries(self, terms: list[str], date_from: str, date_to: str, category: str = "") -> list:
        out = super().entries(terms, date_from, date_to, category)
        for e in self.extra_entries:
            hay = " ".join([e.title, e.abstract, " ".join(e.authors)]).lower()
            in_category = not category or any(c == category or c.split(".")[0] == category for c in e.categories)
            if all(t.lower() in hay for t in terms) and in_category and not (date_from and e.submitted < date_from) \
                    and not (date_to and e.submitted > date_to):
                out.append(e)
        return sorted(out, key=lambda p: p.submitted, reverse=True)

    def page_of(self, entries: list, start: int, size: int) -> list:
        page = entries[start:start + size]
        if self.duplicate_ids and start > 0 and entries:
            page = [entries[0]] + page      # the newest paper shows up again on later pages
        return page

    def _href(self, path: str) -> str:
        return super()._href(path) if self.link_style == "absolute" else path
