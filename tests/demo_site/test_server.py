"""nbutils.demo_site: the demo corpus renders to arXiv-like PDFs."""
from __future__ import annotations

from nbutils.demo_site import load_corpus

CORPUS = load_corpus()


def test_demo_papers_look_like_arxiv_pdfs(tmp_path):
    """What stage 02 and the generator rely on: 3-5 pages of real prose, a running header and a page number
    on every page, a line-end hyphenation, References last; rendering is deterministic and cached."""
    import io
    import re

    from pypdf import PdfReader

    from nbutils.demo_site import cached_pdf, render_paper

    assert 6 <= len(CORPUS) <= 8 and len({p.base_id for p in CORPUS}) == len(CORPUS)
    for paper in CORPUS:
        data = render_paper(paper)
        assert data == render_paper(paper)                                   # deterministic
        assert cached_pdf(paper, tmp_path).read_bytes() == data
        pages = [p.extract_text() for p in PdfReader(io.BytesIO(data)).pages]
        assert 3 <= len(pages) <= 5, (paper.id, len(pages))
        for n, text in enumerate(pages, 1):
            lines = [l.strip() for l in text.splitlines() if l.strip()]
            assert paper.short_title in lines, (paper.id, n)                    # running header
            assert str(n) in lines, (paper.id, n)                               # page number
        full = "\n".join(pages)
        assert paper.title.split(":")[0] in " ".join(full.split()) and "Abstract" in full
        assert re.search(r"[a-z]{2}-\n[a-z]{3}", full), paper.id              # hyphenated at a line end
        assert full.rfind("References") > full.rfind("\n1 Introduction")
        body_words = sum(len(p.split()) for p in pages[:-1]) / max(1, len(pages) - 1)
        assert 300 <= body_words <= 600, (paper.id, body_words)
