"""nbutils.parse.loaders: parser warnings are counted, not printed, and both loaders agree on the cleaned
text."""
from __future__ import annotations

from nbutils.parse import parse_file
from tests.support.pdfs import make_paper_pdf, options, raw_pdf


# ---------------------------------------------------------------- bad files
def test_parser_warnings_are_counted_not_printed(tmp_path, capfd):
    pdf = raw_pdf(b"BT /F1 12 Tf 72 700 Td (" + b"readable words " * 30 + b") Tj ET")
    broken = pdf.replace(b"startxref\n", b"startxref\n9").replace(b"0000000009 00000 n", b"0000000019 00000 n")
    (tmp_path / "warn.pdf").write_bytes(broken)
    result = parse_file(str(tmp_path / "warn.pdf"), options(loader="pypdf", min_chars=10))
    assert result["status"] == "ok" and sum(result["warnings"].values()) >= 1
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ---------------------------------------------------------------- the stage on PDFs
def test_loaders_agree_on_the_cleaned_text(tmp_path):
    pdf = make_paper_pdf(tmp_path / "p.pdf", pages=5, refs_on=4, appendix=True)
    texts = {}
    for loader in ("pypdfium2", "pypdf", "pypdfloader"):
        res = parse_file(str(pdf), options(loader=loader, keep_appendix=True))
        assert res["status"] == "ok", res
        texts[loader] = [" ".join(p["text"].split()) for p in res["pages"]]
    assert texts["pypdf"] == texts["pypdfloader"]
    assert texts["pypdfium2"] == texts["pypdf"]
    assert "A Additional Results" in texts["pypdf"][-1] and "B. Writer" not in texts["pypdf"][-1]
