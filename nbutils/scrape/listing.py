"""The selenium backend's listing: search-result or /list/ pages, following their pagination (each "next"
link passes the host check before it is loaded), turned into records up to max_papers."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from ..arxiv_ids import base_id
from .browser import Browser
from .config import ScrapeConfig
from .errors import ScrapeError
from .records import clean, record_from_listing
from .result import ScrapeResult


def listing_pages(browser: Browser, url: str, max_pages: int = 1000) -> Iterator[dict[str, Any]]:
    """Each page of a search or /list/ listing, following its pagination; a "next" link off the allowed
    hosts (or not http/https) ends the listing with ScrapeError before it is loaded (Browser.load checks)."""
    seen: set[str] = set()
    what = "listing page"
    while url and url not in seen and len(seen) < max_pages:
        seen.add(url)
        page = browser.read_listing(url, what)
        if page["kind"] == "unknown" and not page["empty"]:
            raise ScrapeError(f"{url}: neither arXiv search results (li.arxiv-result) nor a /list/ page "
                              f"(dl#articles) nor an empty-result message; has the markup changed?")
        yield page
        url, what = page.get("next"), "next page"


def add_listing_entries(entries: list[dict], records: dict[str, dict], cfg: ScrapeConfig,
                        result: ScrapeResult) -> None:
    """Turn one page's raw entries into records (first occurrence of a paper wins) up to max_papers."""
    for raw in entries:
        try:
            rec = record_from_listing(raw)
        except ScrapeError as e:
            result.entry_failed(clean(raw.get("abs_text", "")), raw.get("pdf_href", ""), e)
            continue
        if base_id(rec["id"]) not in {base_id(i) for i in records}:
            records[rec["id"]] = rec
        if len(records) >= cfg.max_papers:
            return


def list_with_browser(browser: Browser, url: str, cfg: ScrapeConfig, result: ScrapeResult) -> list[dict]:
    """Records from a search or /list/ listing, deduplicated by id, at most max_papers."""
    records: dict[str, dict] = {}
    pages = listing_pages(browser, url)
    with tqdm(desc="listing pages", unit="page") as bar:
        while len(records) < cfg.max_papers:
            try:
                page = next(pages)
            except StopIteration:
                break
            except ScrapeError as e:
                result.listing_failed(url, e)
                break
            result.pages += 1
            bar.update(1)
            add_listing_entries(page["results"], records, cfg, result)
    return list(records.values())
