"""Deterministic synthetic arXiv-like PDF corpus for benchmarks.parse_speed (reportlab, no network).

Each paper: a title block, an abstract, two-column body with section headings, inline math symbols and
display equations, ligatures (the "fi"/"fl" glyphs LaTeX fonts emit), words hyphenated across line ends, a
vector figure drawn from a reusable form XObject, a running header (alternating title / authors), a page
number footer, an arXiv stamp in the margin of page 1, a References section and, in some papers, an appendix.
Next to each PDF a ground-truth JSON holds the body words (what a clean parse should keep) and the words of
the references, so extractors and cleaners can be scored against the truth rather than against each other.

    python -m benchmarks.make_corpus OUT_DIR [--papers 40] [--pages 700] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from reportlab.lib.pagesizes import letter
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

WORDS = ("model models training data language learning neural network attention layer layers token tokens "
         "representation representations gradient optimisation optimization transformer encoder decoder "
         "sequence sequences benchmark evaluation performance baseline baselines parameter parameters loss "
         "objective function distribution probability inference generation retrieval augmented instruction "
         "tuning finetuning adaptation low rank matrix matrices vector embedding embeddings context window "
         "memory efficient scalable robust generalisation experiment experiments result results analysis "
         "ablation study method approach propose proposed show demonstrate significantly improve improves "
         "accuracy precision recall score dataset corpus annotation human preference alignment reward policy "
         "reinforcement supervised unsupervised contrastive pretraining pretrained large small quantisation "
         "precision throughput latency hardware accelerator memory bandwidth compute budget scaling law "
         "the of and to in for on with that by from is are we our this which as an be can at").split()
LIGATURE_WORDS = ["efficient", "fine", "first", "field", "flow", "influence", "figure", "specific", "significant",
                  "reflect", "different", "official", "define", "classifier", "confidence", "flexible"]
LONG_WORDS = ["representation", "generalisation", "transformation", "interpretability", "computational",
              "regularisation", "approximation", "decomposition", "hyperparameter", "implementation",
              "configuration", "classification", "distribution", "optimization", "architecture"]
MATH = ["α", "β", "θ", "λ", "∑", "≤", "≥", "∈", "∇", "≈", "×", "∞"]
SECTIONS = ["Introduction", "Related Work", "Background", "Method", "Experimental Setup", "Results",
            "Analysis", "Discussion", "Limitations", "Conclusion"]
VENUES = ["Proc. NeurIPS", "Proc. ICML", "Proc. ACL", "Proc. EMNLP", "Proc. ICLR", "arXiv preprint", "JMLR"]
SURNAMES = ["Smith", "Chen", "Garcia", "Kumar", "Müller", "Rossi", "Tanaka", "Novak", "Dubois", "Okafor",
            "Silva", "Kowalski", "Ivanova", "Haddad", "Larsen", "Nguyen"]

W, H = letter
MARGIN, GUTTER, LEAD = 54.0, 18.0, 11.5
COL_W = (W - 2 * MARGIN - GUTTER) / 2
TOP, BOTTOM = H - 72, 66


def register_fonts() -> dict[str, str]:
    """DejaVu Serif when installed (has Greek, math symbols and fi/fl ligature glyphs); else Times."""
    root = Path("/usr/share/fonts/truetype/dejavu")
    try:
        pdfmetrics.registerFont(TTFont("Body", str(root / "DejaVuSerif.ttf")))
        pdfmetrics.registerFont(TTFont("Bold", str(root / "DejaVuSerif-Bold.ttf")))
        pdfmetrics.registerFont(TTFont("Ital", str(root / "DejaVuSerif-Italic.ttf")))
        return {"body": "Body", "bold": "Bold", "ital": "Ital", "unicode": "1"}
    except Exception:
        return {"body": "Times-Roman", "bold": "Times-Bold", "ital": "Times-Italic", "unicode": ""}


def sentence(rng: random.Random, unicode_ok: bool) -> str:
    n = rng.randint(8, 22)
    words = []
    for _ in range(n):
        r = rng.random()
        if r < 0.08:
            words.append(rng.choice(LIGATURE_WORDS))
        elif r < 0.16:
            words.append(rng.choice(LONG_WORDS))
        elif r < 0.19 and unicode_ok:
            words.append(f"{rng.choice(MATH)}{rng.randint(1, 9)}")
        elif r < 0.21:
            words.append(f"{rng.randint(2, 99)}.{rng.randint(0, 9)}%")
        else:
            words.append(rng.choice(WORDS))
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def paragraph(rng: random.Random, unicode_ok: bool) -> str:
    return " ".join(sentence(rng, unicode_ok) for _ in range(rng.randint(3, 7)))


def ligatured(word: str) -> str:
    """How a LaTeX font draws it: 'fi'/'fl' become single glyphs (extractors see U+FB01/U+FB02)."""
    return word.replace("ffi", "\ufb03").replace("fi", "\ufb01").replace("fl", "\ufb02")


class Layout:
    """Greedy two-column line layout on a reportlab canvas, hyphenating long words at line ends."""

    def __init__(self, c: canvas.Canvas, fonts: dict, rng: random.Random, header: tuple[str, str]):
        self.c, self.fonts, self.rng, self.header = c, fonts, rng, header
        self.page, self.col, self.y = 1, 0, TOP
        self.col_top = TOP
        self.use_lig = bool(fonts["unicode"])

    def x(self) -> float:
        return MARGIN + self.col * (COL_W + GUTTER)

    def decorate(self) -> None:
        c = self.c
        c.setFont(self.fonts["ital"], 8)
        if self.page > 1:
            c.drawCentredString(W / 2, H - 40, self.header[self.page % 2])
        c.setFont(self.fonts["body"], 9)
        c.drawCentredString(W / 2, 36, str(self.page))

    def new_column(self) -> None:
        if self.col == 0:
            self.col, self.y = 1, self.col_top
            return
        self.decorate()
        self.c.showPage()
        self.page += 1
        self.col, self.y, self.col_top = 0, TOP, TOP

    def need(self, height: float) -> None:
        if self.y - height < BOTTOM:
            self.new_column()

    def line(self, text: str, font: str, size: float = 9.5, centred: bool = False) -> None:
        self.need(LEAD)
        self.c.setFont(font, size)
        if centred:
            self.c.drawCentredString(self.x() + COL_W / 2, self.y, text)
        else:
            self.c.drawString(self.x(), self.y, text)
        self.y -= LEAD

    def width(self, s: str, font: str, size: float) -> float:
        return pdfmetrics.stringWidth(s, font, size)

    def paragraph(self, text: str, font: str | None = None, size: float = 9.5) -> None:
        font = font or self.fonts["body"]
        words, cur = text.split(), ""
        draw = (lambda w: ligatured(w)) if self.use_lig else (lambda w: w)
        i = 0
        while i < len(words):
            w = draw(words[i])
            trial = f"{cur} {w}" if cur else w
            if self.width(trial, font, size) <= COL_W:
                cur, i = trial, i + 1
                continue
            if len(words[i]) >= 9 and cur:  # hyphenate: put a prefix of the word on this line
                for cut in range(len(words[i]) - 3, 3, -1):
                    head = f"{cur} {draw(words[i][:cut])}-"
                    if self.width(head, font, size) <= COL_W:
                        self.line(head, font, size)
                        words[i] = words[i][cut:]
                        cur = ""
                        break
                else:
                    self.line(cur, font, size)
                    cur = ""
                continue
            self.line(cur, font, size)
            cur = ""
        if cur:
            self.line(cur, font, size)
        self.y -= 4

    def figure(self, form: str, caption: str) -> None:
        self.need(110)
        self.c.saveState()
        self.c.translate(self.x(), self.y - 90)
        self.c.doForm(form)
        self.c.restoreState()
        self.y -= 96
        self.paragraph(caption, self.fonts["ital"], 8.5)


def make_figure_form(c: canvas.Canvas, rng: random.Random) -> str:
    c.beginForm("fig")
    c.setLineWidth(0.6)
    c.rect(0, 0, COL_W, 86)
    pts = [(10 + i * (COL_W - 20) / 24, 10 + 60 * rng.random()) for i in range(25)]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        c.line(x0, y0, x1, y1)
    for x, y in pts[::3]:
        c.circle(x, y, 1.5, fill=1)
    c.endForm()
    return "fig"


def make_paper(path: Path, idx: int, target_pages: int, fonts: dict, seed: int) -> dict:
    """Write one paper; returns its ground truth (body words, reference words, page count)."""
    rng = random.Random(seed * 1000 + idx)
    unicode_ok = bool(fonts["unicode"])
    title = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(5, 9)))
    authors = [f"{rng.choice('ABCDEFGHJKLMNPRST')}. {rng.choice(SURNAMES)}" for _ in range(rng.randint(2, 5))]
    arxiv_id = f"24{rng.randint(1, 12):02d}.{rng.randint(1000, 99999):05d}v{rng.randint(1, 3)}"
    c = canvas.Canvas(str(path), pagesize=letter, invariant=1, pageCompression=1)
    c.setTitle(title)
    c.setAuthor(", ".join(authors))
    form = make_figure_form(c, rng)
    lay = Layout(c, fonts, rng, (f"{authors[0].split()[-1]} et al.", f"Preprint: {title[:60]}"))
    body: list[str] = []

    # title block (full width) and the arXiv stamp in the left margin of page 1
    c.setFont(fonts["bold"], 15)
    c.drawCentredString(W / 2, TOP, title)
    c.setFont(fonts["body"], 10)
    c.drawCentredString(W / 2, TOP - 20, ", ".join(authors))
    c.saveState()
    c.setFont("Times-Roman", 16)
    c.setFillGray(0.5)
    c.translate(30, H / 2 - 120)
    c.rotate(90)
    c.drawString(0, 0, f"arXiv:{arxiv_id}  [cs.CL]  {rng.randint(1, 28)} May 2024")
    c.restoreState()
    body += title.split() + " ".join(authors).split()
    lay.y = lay.col_top = TOP - 48
    abstract = paragraph(rng, unicode_ok)
    lay.line("Abstract", fonts["bold"], 10)
    lay.paragraph(abstract)
    body += ["Abstract"] + abstract.split()

    n_sections = len(SECTIONS)
    sec = 0
    fig_no = 1
    while lay.page < target_pages - 1 or sec < 4:
        name = SECTIONS[sec % n_sections]
        heading = f"{sec + 1} {name}"
        lay.y -= 4
        lay.line(heading, fonts["bold"], 10.5)
        body += heading.split()
        for _ in range(rng.randint(3, 6)):
            if lay.page >= target_pages - 1 and sec >= 4:
                break
            p = paragraph(rng, unicode_ok)
            lay.paragraph(p)
            body += p.split()
            r = rng.random()
            if r < 0.15:
                eq = (f"L(θ) = −∑ log p(y | x; θ) + λ‖θ‖  ({fig_no})" if unicode_ok
                      else f"L(theta) = - sum log p(y | x) + lambda |theta|  ({fig_no})")
                lay.line(eq, fonts["body"], 9.5, centred=True)
                body += eq.split()
            elif r < 0.25:
                cap = f"Figure {fig_no}: " + sentence(rng, unicode_ok)
                lay.figure(form, cap)
                body += cap.split()
                fig_no += 1
        sec += 1

    refs: list[str] = []
    lay.y -= 6
    lay.line("References", fonts["bold"], 10.5)
    for k in range(rng.randint(25, 45)):
        auth = ", ".join(f"{rng.choice('ABCDEFGHJKLMNPRST')}. {rng.choice(SURNAMES)}" for _ in range(rng.randint(1, 4)))
        t = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize()
        ref = f"[{k + 1}] {auth}. {t}. In {rng.choice(VENUES)}, {rng.randint(2012, 2024)}."
        lay.paragraph(ref, size=8.5)
        refs += ref.split()
    appendix: list[str] = []
    if idx % 3 == 0:
        lay.y -= 6
        lay.line("A Additional Results", fonts["bold"], 10.5)
        appendix += ["A", "Additional", "Results"]
        for _ in range(rng.randint(2, 5)):
            p = paragraph(rng, unicode_ok)
            lay.paragraph(p)
            appendix += p.split()
    lay.decorate()
    c.showPage()
    c.save()
    return {"paper_id": path.stem, "pages": lay.page, "body": body, "references": refs, "appendix": appendix,
            "headers": list(lay.header)}


def make_corpus(out: str | Path, papers: int = 40, pages: int = 700, seed: int = 0) -> list[Path]:
    """Write `papers` PDFs totalling about `pages` pages into out/ (+ out/truth.json); idempotent."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "corpus.json"
    want = {"papers": papers, "pages": pages, "seed": seed, "version": 3}
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == want:
        return sorted(out.glob("*.pdf"))
    fonts = register_fonts()
    rng = random.Random(seed)
    sizes = [rng.randint(8, 28) for _ in range(papers)]
    scale = pages / sum(sizes)
    truth = {}
    for i, n in enumerate(sizes):
        p = out / f"2405.{10000 + i:05d}v1.pdf"
        truth[p.stem] = make_paper(p, i, max(4, round(n * scale)), fonts, seed)
    (out / "truth.json").write_text(json.dumps(truth))
    stamp.write_text(json.dumps({"spec": want, "fonts": fonts,
                                 "pages": sum(t["pages"] for t in truth.values())}))
    return sorted(out.glob("*.pdf"))


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--papers", type=int, default=40)
    ap.add_argument("--pages", type=int, default=700)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    files = make_corpus(a.out, a.papers, a.pages, a.seed)
    print(f"{len(files)} PDFs in {a.out}: {json.loads((Path(a.out) / 'corpus.json').read_text())}")
    return files


if __name__ == "__main__":
    main()
