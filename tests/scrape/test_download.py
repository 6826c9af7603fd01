"""nbutils.scrape.download: validating one PDF and taking its version only from its own header."""
from __future__ import annotations

from nbutils.scrape.download import disposition_id, pdf_problem


def test_version_comes_from_content_disposition_only_for_that_paper():
    assert disposition_id('inline; filename="2405.01234v3.pdf"', "2405.01234") == "2405.01234v3"
    assert disposition_id('inline; filename="hep-th9901001v2.pdf"', "hep-th/9901001") == "hep-th/9901001v2"
    assert disposition_id('inline; filename="2405.09999v3.pdf"', "2405.01234") is None
    assert disposition_id('attachment; filename="../../2405.01234v1.pdf"', "2405.01234") is None
    assert disposition_id(None, "2405.01234") is None


def test_pdf_validation_names_the_problem(tmp_path):
    good = tmp_path / "ok.pdf"
    good.write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF\n")
    assert pdf_problem(good, 1 << 20) is None
    (tmp_path / "cut.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<<")
    assert "truncated" in pdf_problem(tmp_path / "cut.pdf", 1 << 20)
    (tmp_path / "page.pdf").write_bytes(b"<html>captcha</html>")
    assert "not a PDF" in pdf_problem(tmp_path / "page.pdf", 1 << 20)
    assert "cap" in pdf_problem(good, 10)
