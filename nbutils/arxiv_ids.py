"""arXiv identifiers and URLs: what an id looks like, where it sits in a URL, and how arxiv.org's search and
export-API URLs are built. Shared by the scraper (nbutils.scrape) and the demo site (nbutils.demo_site)."""
from __future__ import annotations

import re
from datetime import date
from urllib.parse import urlencode, urlsplit

ARXIV_HOSTS = ("arxiv.org", "export.arxiv.org", "www.arxiv.org")
NEW_ID = r"\d{4}\.\d{4,5}(?:v\d+)?"
OLD_ID = r"[a-z][a-z\-]*(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?"
ARXIV_ID_RE = re.compile(rf"(?:{NEW_ID}|{OLD_ID})")


# ----------------------------------------------------------------------------------------------- ids
def parse_arxiv_id(text: str) -> str | None:
    """The arXiv id in 'arXiv:2405.01234v2', '2405.01234', 'hep-th/9901001', else None."""
    text = (text or "").strip()
    text = text[6:] if text.lower().startswith("arxiv:") else text
    return text if ARXIV_ID_RE.fullmatch(text) else None


def id_from_url(url: str) -> str | None:
    """The arXiv id in an /abs/ or /pdf/ URL (with or without .pdf), else None."""
    m = re.search(r"/(?:abs|pdf)/(.+)$", urlsplit(url or "").path)
    if not m:
        return None
    raw = m.group(1)
    return parse_arxiv_id(raw[:-4] if raw.endswith(".pdf") else raw)


def base_id(arxiv_id: str) -> str:
    """'2405.01234v2' -> '2405.01234'."""
    return re.sub(r"v\d+$", "", arxiv_id)


def has_version(arxiv_id: str) -> bool:
    return bool(re.search(r"v\d+$", arxiv_id))


def version_of(arxiv_id: str) -> int:
    """'2405.01234v2' -> 2; no version -> 0."""
    m = re.search(r"v(\d+)$", arxiv_id)
    return int(m.group(1)) if m else 0


def pdf_filename(arxiv_id: str) -> str:
    """'2405.01234v2' -> '2405.01234v2.pdf'; 'hep-th/9901001v1' -> 'hep-th_9901001v1.pdf'. Refuses anything
    that is not an arXiv id, so no name from a page or a header can point outside pdfs/."""
    if not parse_arxiv_id(arxiv_id):
        raise ValueError(f"not an arXiv id: {arxiv_id!r}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", arxiv_id.replace("/", "_")) + ".pdf"


# ----------------------------------------------------------------------------------------------- URLs
def build_search_url(base: str, query: str, date_from: str = "", date_to: str = "", size: int = 50) -> str:
    """arxiv.org advanced search (all fields, submission-date range, newest first) as a URL."""
    params = [("advanced", ""), ("terms-0-operator", "AND"), ("terms-0-term", query), ("terms-0-field", "all"),
              ("classification-physics_archives", "all"), ("classification-include_cross_list", "include"),
              ("date-year", ""), ("date-filter_by", "date_range" if (date_from or date_to) else "all_dates"),
              ("date-from_date", date_from), ("date-to_date", date_to), ("date-date_type", "submitted_date"),
              ("abstracts", "show"), ("size", str(size)), ("order", "-announced_date_first")]
    return f"{base.rstrip('/')}/search/advanced?{urlencode(params)}"


def build_api_query(query: str, date_from: str = "", date_to: str = "") -> str:
    """`all:llm AND submittedDate:[202404180000 TO 202611252359]` (an open end becomes 1991 / today)."""
    parts = [f"all:{term}" for term in query.split()]
    if date_from or date_to:
        lo = (date_from or "1991-01-01").replace("-", "") + "0000"
        hi = (date_to or date.today().isoformat()).replace("-", "") + "2359"
        parts.append(f"submittedDate:[{lo} TO {hi}]")
    return " AND ".join(parts)


def api_page_url(api_url: str, search_query: str, start: int, max_results: int) -> str:
    return f"{api_url}?" + urlencode({"search_query": search_query, "start": start, "max_results": max_results,
                                      "sortBy": "submittedDate", "sortOrder": "descending"})


def canonical_url(found: str, kind: str, arxiv_id: str) -> str:
    """`https://arxiv.org/{abs|pdf}/{id}` on the host the link was found on (arxiv hosts -> https://arxiv.org).
    A link that is not http(s) is returned as found, so the host check refuses it with its real address."""
    parts = urlsplit(found)
    if parts.hostname in ARXIV_HOSTS:
        return f"https://arxiv.org/{kind}/{arxiv_id}"
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}/{kind}/{arxiv_id}"
    return found
