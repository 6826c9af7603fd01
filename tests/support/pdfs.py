"""PDFs the parse tests make: multi-page papers with reportlab (running header, page numbers, a hyphenated word,
References), hand-written PDFs whose every byte the test controls, slow ones; and the parser options of a config."""
from __future__ import annotations

import zlib
from pathlib import Path

from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas

from nbutils.parse import ParseConfig

WORDS = ("language models learn from data and the training objective shapes what they represent about "
         "syntax meaning and the world while evaluation measures how well they generalise").split()


def body_lines(seed: int, n: int) -> list[str]:
    """Deterministic filler lines of ordinary words (about 60 characters each), each ending in a letter tag
    unique to (seed, i) so no two lines are equal by accident."""
    out = []
    for i in range(n):
        k = (seed * 7 + i * 3) % len(WORDS)
        tag = "".join(chr(97 + (seed * 40 + i) // 26 ** j % 26) for j in range(3))
        out.append(" ".join(WORDS[(k + j) % len(WORDS)] for j in range(8)) + f" q{tag}")
    return out


def make_paper_pdf(path: Path, pages: int = 5, refs_on: int | None = 4, title: str = "A Study of Things",
                   appendix: bool = False) -> Path:
    """A multi-page paper: running header, page-number footer, a hyphenated word, a References section."""
    c = canvas.Canvas(str(path), pagesize=letter, invariant=1)
    for p in range(1, pages + 1):
        c.setFont("Helvetica", 8)
        c.drawString(72, 760, f"Preprint under review - {title}")
        c.setFont("Helvetica", 10)
        y = 720
        lines = body_lines(p, 30)
        if p == 1:
            lines = [title, "Abstract"] + lines
            lines[5] = "we propose a new represen-"
            lines[6] = "tation of the data for learning"
        if refs_on is not None and p == refs_on:
            lines = lines[:12] + ["References"] + [f"[{i}] A. Author. Some cited title {i}. In Proc. Venue, 2020."
                                                   for i in range(1, 15)]
        if refs_on is not None and p > refs_on:
            lines = [f"[{i}] B. Writer. Another cited work number {i}. Journal, 2019." for i in range(15, 40)]
            if appendix and p == pages:
                lines = lines[:5] + ["A Additional Results"] + body_lines(99, 10)
        for line in lines:
            c.drawString(72, y, line)
            y -= 14
        c.setFont("Helvetica", 9)
        c.drawCentredString(306, 40, str(p))
        c.showPage()
    c.save()
    return path


def raw_pdf(content: bytes | None = None, stream: bytes | None = None, pages: int = 1) -> bytes:
    """A hand-written PDF (so tests control every byte): `content` is FlateDecode'd, `stream` goes in as is
    (with /FlateDecode: pass compressed bytes). pages=0 makes a document with an empty page tree."""
    data = stream if stream is not None else zlib.compress(content or b"")
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b"3 0 R" if pages else b"", pages),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def options(**kw) -> dict:
    cfg = ParseConfig(data_dir="/tmp", **kw)
    return {**cfg.cleaning(), "max_memory_mb": cfg.max_memory_mb}
