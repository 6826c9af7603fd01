"""The demo corpus: a handful of short LLM papers the project wrote itself, kept as plain text files
(`papers/*.txt`) so they can be read, reviewed and diffed; the PDFs are rendered from them (pdf.py).

File format: `key: value` header lines (id, title, authors `;`-separated, affiliation, versions
`,`-separated ISO dates, categories space-separated, comments, short_title), a blank line, then sections
opened by `## Heading` lines; paragraphs are separated by blank lines; a line starting with `$$ ` is a
displayed formula; under `## References` every line is one reference.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

PAPERS_DIR = Path(__file__).resolve().parent / "papers"


@dataclass(frozen=True)
class Section:
    heading: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class DemoPaper:
    """One paper of the demo site: arXiv-style metadata plus its full text."""

    base_id: str
    title: str
    authors: tuple[str, ...]
    affiliation: str
    versions: tuple[str, ...]          # ISO dates of v1, v2, ...
    categories: tuple[str, ...]        # primary first
    comments: str
    short_title: str
    abstract: str
    sections: tuple[Section, ...]
    references: tuple[str, ...]
    source_sha256: str = field(default="", compare=False)

    @property
    def version(self) -> int:
        return len(self.versions)

    @property
    def id(self) -> str:
        return f"{self.base_id}v{self.version}"

    @property
    def submitted(self) -> str:
        """Date of v1 (what arXiv's search filters on and the API calls `published`)."""
        return self.versions[0]

    @property
    def updated(self) -> str:
        return self.versions[-1]

    def submitted_date(self) -> date:
        return date.fromisoformat(self.submitted)

    def word_count(self) -> int:
        body = " ".join(p for s in self.sections for p in s.paragraphs)
        return len((self.abstract + " " + body).split())


def parse_paper(text: str, source: str = "<text>") -> DemoPaper:
    """Parse one paper file (format in the module docstring)."""
    head, _, body = text.partition("\n\n")
    meta: dict[str, str] = {}
    for line in head.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"{source}: header line without 'key: value': {line!r}")
        meta[key.strip()] = value.strip()
    missing = {"id", "title", "authors", "versions", "categories"} - set(meta)
    if missing:
        raise ValueError(f"{source}: missing header field(s) {', '.join(sorted(missing))}")
    sections: list[tuple[str, list[str]]] = []
    for block in body.split("\n\n"):
        block = block.strip("\n")
        if not block.strip():
            continue
        lines = block.splitlines()
        if lines[0].startswith("## "):
            sections.append((lines[0][3:].strip(), []))
            lines = lines[1:]
        if not lines:
            continue
        if not sections:
            raise ValueError(f"{source}: text before the first '## ' heading")
        if sections[-1][0].lower() == "references":
            sections[-1][1].extend(line.strip() for line in lines if line.strip())
        else:
            sections[-1][1].append(" ".join(line.strip() for line in lines))
    by_name = {h.lower(): paras for h, paras in sections}
    if "abstract" not in by_name or "references" not in by_name:
        raise ValueError(f"{source}: needs '## Abstract' and '## References' sections")
    body_sections = tuple(Section(h, tuple(p)) for h, p in sections if h.lower() not in ("abstract", "references"))
    return DemoPaper(
        base_id=meta["id"], title=meta["title"],
        authors=tuple(a.strip() for a in meta["authors"].split(";") if a.strip()),
        affiliation=meta.get("affiliation", ""),
        versions=tuple(v.strip() for v in meta["versions"].split(",") if v.strip()),
        categories=tuple(meta["categories"].split()), comments=meta.get("comments", ""),
        short_title=meta.get("short_title", meta["title"]),
        abstract=" ".join(by_name["abstract"]), sections=body_sections,
        references=tuple(by_name["references"]),
        source_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def load_corpus(folder: Path = PAPERS_DIR) -> list[DemoPaper]:
    """Every paper of the demo corpus, newest submission first (arXiv's default order)."""
    papers = [parse_paper(p.read_text(encoding="utf-8"), source=p.name) for p in sorted(folder.glob("*.txt"))]
    return sorted(papers, key=lambda p: (p.submitted, p.base_id), reverse=True)
