"""The api backend: arXiv's export API (Atom XML, paged with start/max_results). One entry that cannot be
read is skipped with its reason; the rest of the page is kept."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..arxiv_ids import api_page_url, build_api_query, id_from_url
from .config import ScrapeConfig
from .errors import ScrapeError
from .http import HttpClient
from .records import blank_record, clean
from .result import ScrapeResult

ATOM = {"a": "http://www.w3.org/2005/Atom", "arxiv": "http://arxiv.org/schemas/atom",
        "os": "http://a9.com/-/spec/opensearch/1.1/"}


@dataclass
class AtomPage:
    """One export-API answer: its readable records, the entries skipped (id, reason), and the counts."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    entries: int = 0
    total: int = 0


def record_from_entry(entry: ET.Element) -> dict[str, Any]:
    """One Atom <entry> as a papers.jsonl record; raises ScrapeError naming the entry when it is unusable."""
    entry_id = entry.findtext("a:id", "", ATOM).strip()
    pid = id_from_url(entry_id)
    if not pid:
        raise ScrapeError(f"API entry {entry_id!r} has no valid arXiv id")
    links = entry.findall("a:link", ATOM)
    pdf = next((ln.get("href", "") for ln in links if ln.get("title") == "pdf"), "")
    alt = next((ln.get("href", "") for ln in links if ln.get("rel") == "alternate"), entry_id)
    primary = entry.find("arxiv:primary_category", ATOM)
    cats = [c.get("term", "") for c in entry.findall("a:category", ATOM)]
    if primary is not None and primary.get("term") in cats:
        cats.remove(primary.get("term"))
        cats.insert(0, primary.get("term"))
    rec = blank_record()
    rec.update(id=pid, title=clean(entry.findtext("a:title", "", ATOM)),
               authors=[clean(a.findtext("a:name", "", ATOM)) for a in entry.findall("a:author", ATOM)],
               abstract=clean(entry.findtext("a:summary", "", ATOM)),
               submitted=entry.findtext("a:published", "", ATOM).strip()[:10],
               categories=[c for c in cats if c], abs_url=alt, pdf_url=pdf or alt.replace("/abs/", "/pdf/"))
    return rec


def parse_atom(xml_text: str) -> AtomPage:
    """Records and opensearch:totalResults of one export-API answer; an API error entry raises."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ScrapeError(f"export API answered something that is not Atom XML ({e})") from e
    try:
        total = int(root.findtext("os:totalResults", "0", ATOM) or 0)
    except ValueError:
        raise ScrapeError("export API answer has an unreadable opensearch:totalResults") from None
    page = AtomPage(total=total)
    for entry in root.findall("a:entry", ATOM):
        entry_id = entry.findtext("a:id", "", ATOM).strip()
        if "/api/errors" in entry_id:
            raise ScrapeError(f"export API error: {clean(entry.findtext('a:summary', '', ATOM))}")
        page.entries += 1
        try:
            page.records.append(record_from_entry(entry))
        except ScrapeError as e:
            page.skipped.append((entry_id, str(e)))
    return page


def api_pages(client: HttpClient, cfg: ScrapeConfig, api_url: str) -> Iterator[AtomPage]:
    """Pages from the export API until max_papers or the end of the results."""
    search_query = build_api_query(cfg.query, cfg.date_from, cfg.date_to)
    start = 0
    while start < cfg.max_papers:
        n = min(cfg.page_size, cfg.max_papers - start)
        page = parse_atom(client.get_text(api_page_url(api_url, search_query, start, n), "API page"))
        yield page
        start += n
        if not page.entries or start >= page.total:
            return


def list_with_api(client: HttpClient, cfg: ScrapeConfig, api_url: str, result: ScrapeResult) -> list[dict]:
    """Records from the export API, deduplicated by id, at most max_papers."""
    records: dict[str, dict] = {}
    try:
        for page in tqdm(api_pages(client, cfg, api_url), desc="API pages", unit="page"):
            result.pages += 1
            for entry_id, reason in page.skipped:
                result.entry_failed(entry_id, api_url, ScrapeError(reason))
            for rec in page.records:
                records.setdefault(rec["id"], rec)
    except ScrapeError as e:
        result.listing_failed(api_url, e)
    return list(records.values())[: cfg.max_papers]
