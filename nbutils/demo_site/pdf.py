"""Render a demo paper as an arXiv-looking PDF with reportlab: title block, abstract, numbered sections,
a running header and a page number on every page, words hyphenated at line ends, references last.
Output is deterministic (reportlab's invariant mode) and cached by the hash of the source text."""
from __future__ import annotations

import hashlib
import io
import re
from datetime import date
from pathlib import Path

from reportlab.lib.pagesizes import letter
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen import canvas

from ..io import atomic_write_bytes
from .corpus import DemoPaper

RENDER_VERSION = "2"   # bump when the layout changes, so cached PDFs are rebuilt
PAGE_W, PAGE_H = letter
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 84.0, 78.0, 72.0
BODY_FONT, BOLD_FONT, ITALIC_FONT = "Times-Roman", "Times-Bold", "Times-Italic"
BODY_SIZE, BODY_LEADING = 11.5, 15.5
MIN_HYPHEN_PREFIX, MIN_HYPHEN_SUFFIX = 4, 3
VOWELS = set("aeiouy")


DIGRAPHS = {"ch", "ck", "gh", "ng", "ph", "qu", "sh", "th", "wh", "wr"}


def hyphen_points(word: str) -> list[int]:
    """Plausible English break points: between two consonants that sit between vowels (struc-tured),
    else before a single consonant followed by a vowel (docu-ments); never inside a digraph."""
    w = word.lower()
    good, fair = [], []
    for i in range(MIN_HYPHEN_PREFIX, len(w) - MIN_HYPHEN_SUFFIX + 1):
        a, b = w[i - 1], w[i]
        if w[i - 1:i + 1] in DIGRAPHS or w[i:i + 2] in ("ng", "ck"):
            continue
        if (a not in VOWELS and b not in VOWELS and i >= 2 and w[i - 2] in VOWELS
                and i + 1 < len(w) and w[i + 1] in VOWELS):
            good.append(i)
        elif a in VOWELS and b not in VOWELS and i + 1 < len(w) and w[i + 1] in VOWELS and b != "x":
            fair.append(i)
    return good or fair


def hyphen_split(word: str, room: float, font: str, size: float) -> tuple[str, str] | None:
    """Split a long plain word so that `prefix-` fits in `room` points; None when it should not be split."""
    core = word.rstrip(".,;:)")
    if len(core) < MIN_HYPHEN_PREFIX + MIN_HYPHEN_SUFFIX or not core.isalpha():
        return None
    fitting = [i for i in hyphen_points(core) if stringWidth(word[:i] + "-", font, size) <= room]
    if not fitting:
        return None
    best = fitting[-1]
    return word[:best] + "-", word[best:]


def wrap(text: str, width: float, font: str = BODY_FONT, size: float = BODY_SIZE, hyphenate: bool = True) -> list[str]:
    """Greedy line breaking with hyphenation of long words that would otherwise leave a ragged gap."""
    lines: list[str] = []
    line = ""
    words = text.split()
    while words:
        word = words.pop(0)
        candidate = f"{line} {word}" if line else word
        if stringWidth(candidate, font, size) <= width:
            line = candidate
            continue
        room = width - stringWidth(line + " ", font, size) if line else width
        split = hyphen_split(word, room, font, size) if hyphenate and room > width * 0.10 else None
        if split:
            lines.append(f"{line} {split[0]}" if line else split[0])
            line = ""
            words.insert(0, split[1])
        elif line:
            lines.append(line)
            line = ""
            words.insert(0, word)
        else:  # a single word wider than the line: put it alone
            lines.append(word)
    if line:
        lines.append(line)
    return lines


class PaperCanvas:
    """A cursor over reportlab pages that adds the running header and page number to every page."""

    def __init__(self, paper: DemoPaper, out: io.BytesIO):
        self.paper = paper
        self.c = canvas.Canvas(out, pagesize=letter, invariant=1, pageCompression=1)
        self.c.setTitle(paper.title)
        self.c.setAuthor("; ".join(paper.authors))
        self.c.setSubject(f"arXiv:{paper.id} [{paper.categories[0]}]")
        self.c.setCreator("nbutils demo_site (reportlab)")
        self.page = 0
        self.y = 0.0
        self.width = PAGE_W - 2 * MARGIN_X
        self.new_page()

    def new_page(self) -> None:
        if self.page:
            self.c.showPage()
        self.page += 1
        c = self.c
        stamp = date.fromisoformat(self.paper.updated).strftime("%B %Y")
        c.setFont(ITALIC_FONT, 9)
        c.drawString(MARGIN_X, PAGE_H - 48, self.paper.short_title)
        c.drawRightString(PAGE_W - MARGIN_X, PAGE_H - 48, f"Preprint, {stamp}")
        c.setLineWidth(0.4)
        c.line(MARGIN_X, PAGE_H - 53, PAGE_W - MARGIN_X, PAGE_H - 53)
        c.setFont(BODY_FONT, 10)
        c.drawCentredString(PAGE_W / 2, 40, str(self.page))
        self.y = PAGE_H - MARGIN_TOP

    def need(self, height: float) -> None:
        if self.y - height < MARGIN_BOTTOM:
            self.new_page()

    def text_lines(self, lines: list[str], font: str, size: float, leading: float, x: float | None = None,
                   centred: bool = False, indent_after_first: float = 0.0) -> None:
        for i, line in enumerate(lines):
            self.need(leading)
            self.y -= leading
            self.c.setFont(font, size)
            if centred:
                self.c.drawCentredString(PAGE_W / 2, self.y, line)
            else:
                self.c.drawString((x or MARGIN_X) + (indent_after_first if i else 0.0), self.y, line)

    def paragraph(self, text: str, font: str = BODY_FONT, size: float = BODY_SIZE, leading: float = BODY_LEADING,
                  inset: float = 0.0, gap: float = 5.0) -> None:
        width = self.width - 2 * inset
        self.text_lines(wrap(text, width, font, size), font, size, leading, x=MARGIN_X + inset)
        self.y -= gap

    def heading(self, text: str) -> None:
        self.need(BODY_LEADING * 4)   # keep a heading with the start of its first paragraph
        self.y -= 8
        self.text_lines([text], BOLD_FONT, 13, 18)
        self.y -= 3

    def formula(self, text: str) -> None:
        self.need(BODY_LEADING * 2)
        self.y -= 4
        self.text_lines([text], ITALIC_FONT, BODY_SIZE, BODY_LEADING, centred=True)
        self.y -= 8

    def reference(self, text: str) -> None:
        hang = 18.0
        lines = wrap(text, self.width - hang, BODY_FONT, 10, hyphenate=False)
        self.text_lines(lines, BODY_FONT, 10, 13, indent_after_first=hang)
        self.y -= 3

    def title_block(self) -> None:
        p = self.paper
        self.y -= 10
        for line in wrap(p.title, self.width - 40, BOLD_FONT, 17, hyphenate=False):
            self.text_lines([line], BOLD_FONT, 17, 22, centred=True)
        self.y -= 8
        self.text_lines(wrap(", ".join(p.authors), self.width - 40, BODY_FONT, 11.5, False), BODY_FONT, 11.5, 15,
                        centred=True)
        if p.affiliation:
            self.text_lines(wrap(p.affiliation, self.width - 40, ITALIC_FONT, 10.5, False), ITALIC_FONT, 10.5, 14,
                            centred=True)
        self.y -= 14
        self.text_lines(["Abstract"], BOLD_FONT, 12, 16, centred=True)
        self.y -= 2
        self.paragraph(p.abstract, size=10.5, leading=14, inset=28)
        self.y -= 6

    def save(self) -> None:
        self.c.showPage()
        self.c.save()


def render_paper(paper: DemoPaper) -> bytes:
    """The PDF bytes of one demo paper."""
    out = io.BytesIO()
    pc = PaperCanvas(paper, out)
    pc.title_block()
    for section in paper.sections:
        pc.heading(section.heading)
        for para in section.paragraphs:
            if para.startswith("$$ "):
                pc.formula(para[3:].strip())
            else:
                pc.paragraph(para)
    pc.heading("References")
    for ref in paper.references:
        pc.reference(ref)
    pc.save()
    return out.getvalue()


def cache_key(paper: DemoPaper) -> str:
    return hashlib.sha256(f"{RENDER_VERSION}\0{paper.source_sha256}".encode()).hexdigest()[:16]


def cached_pdf(paper: DemoPaper, cache_dir: str | Path) -> Path:
    """Path of the rendered PDF under cache_dir, rendering it (atomically) only when missing."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", paper.id)
    path = Path(cache_dir) / f"{safe}-{cache_key(paper)}.pdf"
    if not path.exists():
        atomic_write_bytes(path, render_paper(paper))
    return path
