"""Parameters of 01_scrape: field defaults are the `full` recipe (arxiv.org); `demo` serves the local look-alike."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import ClassVar

from .. import __version__
from ..config import ConfigValueError, StageConfig, option

USER_AGENT = (f"nbutils-arxiv-pipeline/{__version__} (research notebook series; one request per 3 s; "
              f"python-requests, selenium)")


@dataclass
class ScrapeConfig(StageConfig):
    """Parameters of 01_scrape (notebook names: search_url, backend, max_papers, delay_s, ...)."""

    PROFILE_OVERRIDES: ClassVar[dict] = {
        "demo": {"site": "demo", "max_papers": 8, "delay_s": 0.2, "page_size": 3, "backoff_s": 0.5,
                 "max_wait_s": 10.0, "timeout_s": 20.0, "max_request_s": 60.0, "max_pdf_mb": 20.0},
        "original": {},   # full already is the original's method: arxiv.org search pages in Selenium, query "llm"
    }
    PATH_FIELDS: ClassVar[dict] = {"pdf_dir": "pdfs", "papers_path": "papers", "report_path": "scrape_report"}
    INPUT_FIELDS: ClassVar[tuple] = ()
    OUTPUT_FIELDS: ClassVar[tuple] = ('pdf_dir', 'papers_path', 'report_path')

    search_url: str = option("", "a search-result or /list/ page URL; empty: built from query and dates")
    backend: str = option("selenium", "selenium (a real headless Chromium) or api (export API, Atom)",
                          choices=("selenium", "api"))
    query: str = option("llm", "search terms, all fields (the original searched llm)")
    date_from: str = option("2024-04-18", "first submission date, YYYY-MM-DD (empty: open); default: Llama 3")
    date_to: str = option("", "last submission date, YYYY-MM-DD (empty: open)")
    max_papers: int = option(50, "stop after this many distinct papers", ge=1)
    delay_s: float = option(3.0, "seconds between requests; never below 3 s for a non-loopback host", ge=0)
    page_size: int = option(50, "results per page (arxiv.org: 25, 50, 100, 200; others round up)", ge=1)
    site: str = option("https://arxiv.org", "demo: serve the bundled arXiv look-alike on 127.0.0.1; else a URL")
    api_url: str = option("https://export.arxiv.org/api/query", "the export API endpoint (backend=api)")
    allowed_hosts: list[str] = option([], "extra hosts pages and PDFs may come from (the listing's own are allowed)")
    download: bool = option(True, "False: list only")
    max_retries: int = option(4, "retries after a 429/5xx or a network error", ge=0)
    backoff_s: float = option(5.0, "first wait after a 429/5xx without Retry-After; doubles each retry", ge=0)
    max_wait_s: float = option(300.0, "a longer Retry-After fails that item instead of waiting", ge=0)
    timeout_s: float = option(60.0, "connect/read timeout of one request; also a page load's limit", gt=0)
    max_request_s: float = option(300.0, "longest one HTTP request may take, body included (a slow drip fails)", gt=0)
    max_pdf_mb: float = option(50.0, "size cap per PDF", gt=0)
    user_agent: str = option(USER_AGENT, "sent with every request ($ARXIV_CONTACT adds a mailto:)")
    browser_binary: str = option("/usr/bin/chromium", "the Chromium binary")
    driver_path: str = option("/usr/bin/chromedriver", "chromedriver (never downloaded at run time)")
    pdf_dir: str | None = option(None, "None: data_dir/pdfs")
    papers_path: str | None = option(None, "None: data_dir/papers.jsonl")
    report_path: str | None = option(None, "None: data_dir/scrape_report.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_papers < 1:
            raise ConfigValueError(f"max_papers={self.max_papers}: must be >= 1")
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value:
                try:
                    date.fromisoformat(value)
                except ValueError:
                    raise ConfigValueError(f"{name}={value!r}: expected YYYY-MM-DD") from None
        for name in ("timeout_s", "max_request_s"):
            if getattr(self, name) <= 0:
                raise ConfigValueError(f"{name}={getattr(self, name)}: must be > 0")
