"""Text cleaning rules for one paper's pages: pure functions on text, each returning what it removed.

Order in `clean_pages`: loader quirks -> normalise (ligatures, whitespace) -> running headers/footers and page
numbers -> the References section (and what follows) -> rejoin hyphenated words -> drop short pages.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
             "\ufb05": "st", "\ufb06": "st"}
_LIGATURE_RE = re.compile("[" + "".join(LIGATURES) + "]")
_ODD_SPACE_RE = re.compile(r"[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH_RE = re.compile(r"[\u200b-\u200d\u2060\ufeff]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HYPHEN_BREAK_RE = re.compile(r"\b([^\W\d_]{2,})-\n[ \t]*([^\W\d_][^\W_]*)")
_WORD_RE = re.compile(r"[^\W_][\w-]*")
_REFERENCES_RE = re.compile(r"^(?:\d{1,2}\.?|[IVX]{1,4}\.)?\s*(references|bibliography|works cited|literature cited|"
                            r"reference list|references and notes)\s*:?$", re.I)
_APPENDIX_RE = re.compile(r"^(?:(?:appendix|appendices|supplementary materials?|supplemental materials?)\b.*"
                          r"|[A-H](?:\.\d+)*\s+[A-Z][A-Za-z-]+(?:\s+[A-Za-z-]+){0,7})$")
_PAGE_NUMBER_RE = re.compile(r"^(?:page\s*)?[-\u2013\u2014(\[]?\s*(?:#|[ivxlc]{1,6})\s*[-\u2013\u2014)\]]?"
                             r"(?:\s*(?:of|/)\s*#)?$", re.I)
_ARXIV_STAMP_RE = re.compile(r"^arXiv:\s?\d{4}\.\d{4,5}(?:v\d+)?\s*\[[^\]]+\]\s*\d{1,2}\s*[A-Za-z]{3}\s*\d{4}$")


def fix_extraction_marks(text: str) -> str:
    """Loader quirks, not cleaning: PDFium marks a line-end hyphen as U+0002 and ends lines with CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "-\n")


def normalize_text(text: str) -> tuple[str, dict[str, int]]:
    """Ligature glyphs -> letters; odd spaces/control chars -> plain spaces; trailing/multiple spaces and
    runs of blank lines collapsed. Not full NFKC: that would also turn x² into x2 and ℝ into R."""
    ligatures = len(_LIGATURE_RE.findall(text))
    out = _LIGATURE_RE.sub(lambda m: LIGATURES[m.group()], text)
    before = len(out)
    out = out.replace("\u00ad\n", "-\n").replace("\u00ad", "")
    out = _ZERO_WIDTH_RE.sub("", out)
    out = _ODD_SPACE_RE.sub(" ", out)
    out = re.sub(r" {2,}", " ", out)
    out = "\n".join(line.strip() for line in out.split("\n"))
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, {"ligatures": ligatures, "whitespace_chars": before - len(out)}


def line_key(line: str) -> str:
    """What makes two header lines 'the same': case, spacing and digits (page numbers, years) ignored."""
    return re.sub(r"\d+", "#", re.sub(r"\s+", " ", line.strip().lower()))


def _zone_indices(lines: list[str], zone: int) -> list[int]:
    nonempty = [i for i, ln in enumerate(lines) if ln.strip()]
    return sorted(set(nonempty[:zone] + nonempty[-zone:])) if zone > 0 else []


def find_running_lines(pages: list[str], min_fraction: float = 0.4, zone: int = 3) -> set[str]:
    """Keys of lines that sit in the top/bottom `zone` lines of at least `min_fraction` of the pages
    (and of at least 2 pages): running headers, footers, page numbers."""
    if len(pages) < 2:
        return set()
    seen: Counter[str] = Counter()
    for text in pages:
        lines = text.split("\n")
        seen.update({line_key(lines[i]) for i in _zone_indices(lines, zone)})
    need = max(2, math.ceil(min_fraction * len(pages)))
    return {k for k, n in seen.items() if n >= need and k}


def drop_running_lines(pages: list[str], min_fraction: float = 0.4, zone: int = 3
                       ) -> tuple[list[str], list[dict[str, int]]]:
    """Remove repeating header/footer lines (and the arXiv margin stamp) from each page's top/bottom zone."""
    keys = find_running_lines(pages, min_fraction, zone)
    out, stats = [], []
    for text in pages:
        lines = text.split("\n")
        drop, st = set(), {"header_lines": 0, "page_number_lines": 0, "header_chars": 0}
        for i in _zone_indices(lines, zone):
            key = line_key(lines[i])
            if key in keys or _ARXIV_STAMP_RE.match(lines[i].strip()):
                drop.add(i)
                st["page_number_lines" if _PAGE_NUMBER_RE.match(key) else "header_lines"] += 1
                st["header_chars"] += len(lines[i]) + 1
        out.append("\n".join(ln for i, ln in enumerate(lines) if i not in drop).strip())
        stats.append(st)
    return out, stats


def find_references(pages: list[str], min_position: float = 0.3) -> tuple[int, int] | None:
    """(page index, line index) of the last References/Bibliography heading that lies past `min_position`
    of the paper's text (so a table of contents early on is never taken for it); None if there is none."""
    total = sum(len(p) for p in pages) or 1
    found, done = None, 0
    for pi, text in enumerate(pages):
        offset = 0
        for li, line in enumerate(text.split("\n")):
            if _REFERENCES_RE.match(line.strip()) and (done + offset) / total >= min_position:
                found = (pi, li)
            offset += len(line) + 1
        done += len(text)
    return found


def find_appendix(pages: list[str], start: tuple[int, int]) -> tuple[int, int] | None:
    """First appendix heading after `start` (page index, line index), or None."""
    for pi in range(start[0], len(pages)):
        lines = pages[pi].split("\n")
        for li in range(start[1] + 1 if pi == start[0] else 0, len(lines)):
            line = lines[li].strip()
            if len(line) < 80 and _APPENDIX_RE.match(line):
                return pi, li
    return None


def cut_references(pages: list[str], keep_appendix: bool = False) -> tuple[list[str], list[int]]:
    """Cut from the References heading to the end (or to the first appendix heading when keep_appendix).
    Returns the new pages (a page wholly inside the cut becomes '') and chars removed per page."""
    start = find_references(pages)
    removed = [0] * len(pages)
    if start is None:
        return list(pages), removed
    end = find_appendix(pages, start) if keep_appendix else None
    out = []
    for pi, text in enumerate(pages):
        lines = text.split("\n")
        keep = []
        for li, line in enumerate(lines):
            after_start = (pi, li) >= start
            before_end = end is None or (pi, li) < end
            if after_start and before_end:
                removed[pi] += len(line) + 1
            else:
                keep.append(line)
        out.append("\n".join(keep).strip())
    return out, removed


def word_vocabulary(texts: Iterable[str]) -> set[str]:
    """Lower-cased words of the texts; a hyphenated word also gives each pair of adjacent parts
    ('state-of-the-art' -> 'state-of', 'of-the', 'the-art'), so a line break inside it is recognised."""
    vocab: set[str] = set()
    for text in texts:
        for w in _WORD_RE.findall(text.lower()):
            vocab.add(w)
            if "-" in w:
                parts = w.split("-")
                vocab.update(f"{a}-{b}" for a, b in zip(parts, parts[1:]))
    return vocab


def rejoin_hyphenated(text: str, vocabulary: set[str] | None = None) -> tuple[str, int]:
    """Rejoin words split by a hyphen at a line end. The hyphen is kept when the second part is capitalised
    or the paper itself writes the hyphenated form ('state-of-the-art') and never the joined one."""
    vocab = vocabulary if vocabulary is not None else word_vocabulary([text])
    joins = 0

    def join(m: re.Match) -> str:
        nonlocal joins
        joins += 1
        a, b = m.group(1), m.group(2)
        hyphened, joined = f"{a}-{b}".lower(), f"{a}{b}".lower()
        keep = b[0].isupper() or (hyphened in vocab and joined not in vocab)  # 'BERT-\nBased' stays hyphened
        return f"{a}-{b}" if keep else f"{a}{b}"

    return _HYPHEN_BREAK_RE.sub(join, text), joins


def clean_pages(raw_pages: list[str], normalize: bool = True, drop_headers: bool = True,
                header_min_fraction: float = 0.4, header_zone_lines: int = 3, drop_references: bool = True,
                keep_appendix: bool = False, dehyphenate: bool = True, min_chars: int = 200,
                **_: Any) -> tuple[list[dict], dict[str, int]]:
    """Clean one paper's pages. Returns the kept pages [{page (1-based), text, removed}] and
    {pages_dropped_references, pages_dropped_short, removed (totals over all pages, dropped ones too)}."""
    pages = [fix_extraction_marks(p) for p in raw_pages]
    removed: list[dict[str, int]] = [{} for _ in pages]
    if normalize:
        for i, p in enumerate(pages):
            pages[i], st = normalize_text(p)
            removed[i].update(st)
    if drop_headers:
        pages, stats = drop_running_lines(pages, header_min_fraction, header_zone_lines)
        for r, st in zip(removed, stats):
            r.update(st)
    ref_pages = 0
    if drop_references:
        before = [bool(p.strip()) for p in pages]
        pages, cut = cut_references(pages, keep_appendix)
        for r, n in zip(removed, cut):
            r["reference_chars"] = n
        ref_pages = sum(1 for b, p in zip(before, pages) if b and not p.strip())
    if dehyphenate and any("-\n" in p for p in pages):
        vocab = word_vocabulary(pages)
        for i, p in enumerate(pages):
            pages[i], n = rejoin_hyphenated(p, vocab)
            removed[i]["hyphen_joins"] = n
    totals: Counter[str] = Counter()
    for r in removed:
        totals.update(r)
    kept, short = [], 0
    for i, text in enumerate(pages):
        if not text.strip() and drop_references and removed[i].get("reference_chars"):
            continue  # counted in ref_pages
        if len(text.strip()) < min_chars:
            short += 1
            continue
        kept.append({"page": i + 1, "text": text, "removed": {k: v for k, v in removed[i].items() if v}})
    info = {"pages_dropped_references": ref_pages, "pages_dropped_short": short,
            "removed": {k: v for k, v in totals.items() if v}}
    return kept, info
