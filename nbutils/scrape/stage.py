"""Stage 01 end to end: list papers (selenium or api backend), then download or skip each PDF, appending each
finished record to papers.jsonl as it lands; `run(cfg)` also serves the demo site when site="demo"."""
from __future__ import annotations

import dataclasses
import time
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from ..arxiv_ids import build_search_url, has_version
from ..io import append_jsonl, write_json, write_jsonl
from ..lock import locked_stage
from .api import list_with_api
from .browser import Browser
from .config import ScrapeConfig
from .errors import ScrapeError, say
from .hosts import HostPolicy, is_loopback
from .http import HttpClient, Throttle
from .listing import list_with_browser
from .records import apply_abs, canonicalise
from .result import ScrapeResult
from .store import download_one, find_existing, load_existing, place_under_id, remove_stale_downloads

ARXIV_PAGE_SIZES = (25, 50, 100, 200)


def arxiv_page_size(size: int, host: str) -> int:
    """arxiv.org only accepts 25/50/100/200 results per page: round up to the next (loopback: as asked)."""
    if is_loopback(host):
        return size
    return next((s for s in ARXIV_PAGE_SIZES if s >= size), ARXIV_PAGE_SIZES[-1])


def scrape(cfg: ScrapeConfig, search_url: str = "", api_url: str = "") -> ScrapeResult:
    """Run the stage against `search_url` (selenium) or `api_url` (api); writes pdfs/, papers.jsonl, report."""
    t0 = time.monotonic()
    result = ScrapeResult()
    throttle = Throttle(cfg.delay_s)
    host = urlsplit(search_url or cfg.search_url or cfg.site).hostname or ""
    search_url = search_url or cfg.search_url or build_search_url(
        cfg.site, cfg.query, cfg.date_from, cfg.date_to, arxiv_page_size(cfg.page_size, host))
    api_url = api_url or cfg.api_url
    result.source = api_url if cfg.backend == "api" else search_url
    policy = HostPolicy.for_sources(result.source, extra=cfg.allowed_hosts)
    client = HttpClient(cfg, throttle, policy)
    browser = Browser(cfg, throttle, policy) if cfg.backend == "selenium" else None
    try:
        if browser:
            records = list_with_browser(browser, search_url, cfg, result)
        else:
            records = list_with_api(client, cfg, api_url, result)
        result.records = [canonicalise(r) for r in records]
        say(f"listed {len(records)} paper(s) from {result.pages} page(s) of {result.source}")
        fetch_all(cfg, client, browser, result)
    finally:
        client.close()
        if browser:
            browser.close()
    result.requests = throttle.count
    result.elapsed_s = time.monotonic() - t0
    write_json(cfg.report_path, result.report(cfg))
    return result


def fetch_all(cfg: ScrapeConfig, client: HttpClient, browser: Browser | None, result: ScrapeResult) -> None:
    """Download (or skip) every listed paper; append each finished record to papers.jsonl as it lands,
    then rewrite papers.jsonl deduplicated by id (records naming a file outside pdf_dir are left out)."""
    existing, ignored = load_existing(cfg)
    for pid, reason in ignored:
        result.warn(pid, f"papers.jsonl record not trusted: {reason}")
    remove_stale_downloads(cfg.pdf_dir)
    for rec in tqdm(result.records, desc="PDFs", unit="pdf"):
        fetch_one(cfg, client, browser, result, rec, existing)
        canonicalise(rec)
        if rec["pdf_path"]:
            append_jsonl(cfg.papers_path, [rec])
    merged, _ = load_existing(cfg)
    write_jsonl(cfg.papers_path, merged.values())


def fetch_one(cfg: ScrapeConfig, client: HttpClient, browser: Browser | None, result: ScrapeResult,
              rec: dict, existing: dict[str, dict]) -> None:
    """Skip (valid file on disk), list only, or download one paper; then learn its version from the abs
    page when neither the listing nor the download said it."""
    listed_id = rec["id"]
    try:
        old = find_existing(rec, existing, cfg)
        if old:
            rec.update(id=old["id"], pdf_path=old["pdf_path"], sha256=old["sha256"])
            for key in ("title", "authors", "abstract", "submitted", "categories"):
                rec[key] = rec[key] or old.get(key, rec[key])
            result.status[rec["id"]], result.reasons[rec["id"]] = "skipped", "already downloaded and valid"
        elif not cfg.download:
            result.status[rec["id"]], result.reasons[rec["id"]] = "skipped", "download=False"
        else:
            download_one(client, rec, cfg)
            result.status[rec["id"]] = "downloaded"
    except (ScrapeError, ValueError) as e:
        result.status[rec["id"]], result.reasons[rec["id"]] = "failed", str(e)
        say(f"{listed_id}: failed: {e}")
    if browser and (not has_version(rec["id"]) or not rec["submitted"]):
        try:
            apply_abs(rec, browser.read_abs(rec["abs_url"]))
        except ScrapeError as e:
            result.warn(listed_id, f"abs page not read: {e}")
        if rec["id"] != listed_id:
            for d in (result.status, result.reasons):
                if listed_id in d:
                    d[rec["id"]] = d.pop(listed_id)
        place_under_id(rec, cfg)


@locked_stage("01_scrape")
def run(cfg: ScrapeConfig) -> ScrapeResult:
    """The notebook's call: scrape cfg.site, or, when it is "demo", serve the bundled arXiv look-alike on
    127.0.0.1 for the duration of the run (its PDFs rendered once into data_dir/cache/demo_site)."""
    if cfg.site != "demo":
        return scrape(cfg)
    from ..demo_site import DemoSite

    with DemoSite(cache_dir=cfg.paths.cache / "demo_site", page_size=cfg.page_size) as site:
        say(f"demo arXiv site: {len(site.papers)} papers at {site.base_url}")
        search_url = cfg.search_url or site.search_url(cfg.query, cfg.date_from, cfg.date_to, cfg.page_size)
        cfg = dataclasses.replace(cfg, search_url=search_url, api_url=site.api_url())
        return scrape(cfg)
