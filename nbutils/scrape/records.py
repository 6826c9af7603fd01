"""papers.jsonl records: one shape for both backends (id with version, title, authors, abstract, submitted =
v1 date, categories with the primary first, abs/pdf URLs, pdf_path, sha256), built from what a page showed."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ..arxiv_ids import canonical_url, has_version, id_from_url, parse_arxiv_id
from .errors import ScrapeError

CATEGORY_RE = r"[a-z\-]+(?:\.[A-Za-z\-]+)?"


def blank_record() -> dict[str, Any]:
    return {"id": "", "title": "", "authors": [], "abstract": "", "submitted": "", "categories": [],
            "abs_url": "", "pdf_url": "", "pdf_path": None, "sha256": None}


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_submitted(text: str) -> str:
    """'Submitted 20 May, 2024; v1 submitted 2 May, 2024; ...' -> '2024-05-02' (v1 date, as the API's
    `published`); '' when absent."""
    text = clean(text)
    m = re.search(r"v1 submitted (\d{1,2} \w+,? \d{4})", text) or re.search(r"Submitted (\d{1,2} \w+,? \d{4})", text)
    if not m:
        return ""
    for fmt in ("%d %B, %Y", "%d %B %Y", "%d %b, %Y", "%d %b %Y"):
        try:
            return datetime.strptime(m.group(1), fmt).date().isoformat()
        except ValueError:
            continue
    return ""


def record_from_listing(raw: dict[str, Any]) -> dict[str, Any]:
    """A browser-extracted result (search or /list/ markup) as a papers.jsonl record; raises ScrapeError
    naming the entry when it carries no usable arXiv id."""
    pid = parse_arxiv_id(raw.get("abs_text", "")) or id_from_url(raw.get("abs_href", "")) \
        or id_from_url(raw.get("pdf_href", ""))
    if not pid:
        shown = clean(raw.get("abs_text", "")) or raw.get("abs_href", "") or clean(raw.get("title", ""))[:60]
        raise ScrapeError(f"listing entry {shown!r} has no valid arXiv id")
    if not raw.get("pdf_href"):
        raise ScrapeError(f"{pid}: no 'pdf' link in its listing entry")
    rec = blank_record()
    rec.update(
        id=pid, title=clean(raw.get("title", "")).removeprefix("Title:").strip(),
        authors=[clean(a) for a in raw.get("authors", []) if clean(a)],
        abstract=clean(re.sub(r"[\u25b3\u25bd]\s*(Less|More)\s*$", "", clean(raw.get("abstract", ""))))
        .removeprefix("Abstract:").strip(),
        submitted=parse_submitted(raw.get("submitted_text", "")),
        categories=[c for c in (clean(x) for x in raw.get("categories", [])) if re.fullmatch(CATEGORY_RE, c)],
        abs_url=raw.get("abs_href") or "", pdf_url=raw["pdf_href"],
    )
    return rec


def canonicalise(rec: dict[str, Any]) -> dict[str, Any]:
    """abs/pdf URLs as `<origin>/{abs|pdf}/<id>` (arxiv.org's hosts -> https://arxiv.org)."""
    rec["abs_url"] = canonical_url(rec["abs_url"] or rec["pdf_url"], "abs", rec["id"])
    rec["pdf_url"] = canonical_url(rec["pdf_url"], "pdf", rec["id"])
    return rec


def apply_abs(rec: dict[str, Any], info: dict[str, Any]) -> None:
    """Fill the version (last [vN] of the submission history) and v1 date from an abs page."""
    versions = [int(m.group(1)) for v in info.get("versions", []) if (m := re.fullmatch(r"\[v(\d+)\]", v.strip()))]
    if versions and not has_version(rec["id"]):
        rec["id"] = f"{rec['id']}v{max(versions)}"
    if not rec["submitted"]:
        m = re.search(r"\[v1\]\s*\w{3}, (\d{1,2} \w{3} \d{4})", info.get("history", ""))
        if m:
            rec["submitted"] = datetime.strptime(m.group(1), "%d %b %Y").date().isoformat()
    if not rec["abstract"]:
        rec["abstract"] = clean(info.get("abstract", "")).removeprefix("Abstract:").strip()
    if not rec["categories"]:
        rec["categories"] = re.findall(rf"\(({CATEGORY_RE})\)", info.get("subjects", ""))
