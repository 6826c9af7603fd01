"""Stage 02 end to end (nbutils.parse.stage) on multi-page PDFs the tests make: each bad file skipped with its
reason while the run goes on, headers/page numbers/references removed, chunked records, resume without
duplicates, hostile folders (same stem twice, duplicate bytes, links leaving pdf_dir)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from reportlab.pdfgen import canvas

from nbutils.io import read_json, read_jsonl
from nbutils.parse import ParseConfig, run
from tests.support.pdfs import body_lines, make_paper_pdf, raw_pdf


# ---------------------------------------------------------------- bad files
@pytest.fixture
def bad_dir(tmp_path) -> Path:
    d = tmp_path / "pdfs"
    d.mkdir()
    return d


def make_bad_files(d: Path) -> dict[str, str]:
    """file stem -> the skip reason the stage must give."""
    (d / "empty.pdf").write_bytes(b"")
    (d / "html.pdf").write_bytes(b"<!DOCTYPE html><html>Rate limited</html>")
    good = make_paper_pdf(d / "tmp_good.pdf", pages=2, refs_on=None).read_bytes()
    (d / "tmp_good.pdf").unlink()
    (d / "truncated.pdf").write_bytes(good[: len(good) // 2])
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n")
    c = canvas.Canvas(str(d / "encrypted.pdf"), encrypt="secret-password")
    c.drawString(72, 720, "you cannot read this without the password")
    c.showPage()
    c.save()
    (d / "zero_pages.pdf").write_bytes(raw_pdf(b"", pages=0))
    c = canvas.Canvas(str(d / "image_only.pdf"))
    for _ in range(2):
        c.rect(72, 72, 400, 600, fill=1)
        c.showPage()
    c.save()
    return {"empty": "empty_file", "html": "not_pdf", "truncated": "truncated", "corrupt": "corrupt",
            "encrypted": "encrypted", "zero_pages": "no_pages", "image_only": "no_text_layer"}


@pytest.mark.parametrize("loader", ["pypdfium2", "pypdf"])
def test_each_bad_file_is_skipped_with_its_reason_and_the_run_goes_on(tmp_path, bad_dir, loader):
    expected = make_bad_files(bad_dir)
    make_paper_pdf(bad_dir / "good.pdf")
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), loader=loader, workers=2, timeout_s=60)
    report = run(cfg, progress=False)
    files = report.files
    got = {k: f.get("reason") for k, f in files.items() if k != "good"}
    assert got == expected
    assert all(files[k]["detail"] for k in expected)
    assert files["good"]["status"] == "ok" and files["good"]["pages_kept"] >= 2
    assert {r["paper_id"] for r in read_jsonl(cfg.pages_path)} == {"good"}
    assert read_json(cfg.report_path)["summary"]["skipped"] == len(expected)


# ---------------------------------------------------------------- the stage on PDFs
def test_references_headers_and_page_numbers_removed_from_a_multi_page_pdf(tmp_path):
    (tmp_path / "pdfs").mkdir()
    make_paper_pdf(tmp_path / "pdfs" / "2405.01234v1.pdf", pages=6, refs_on=4)
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), workers=1)
    report = run(cfg, progress=False)
    recs = list(read_jsonl(cfg.pages_path))
    assert [r["page"] for r in recs] == [1, 2, 3, 4]
    text = "\n".join(r["text"] for r in recs)
    assert "References" not in text and "[1]" not in text and "cited" not in text
    assert "Preprint under review" not in text
    assert not any(line.strip().isdigit() for line in text.splitlines())
    assert "representation of the data" in text
    assert body_lines(4, 30)[11] in recs[3]["text"]  # text above the heading on page 4 stays
    f = report.files["2405.01234v1"]
    assert f["pages_total"] == 6 and f["pages_dropped_references"] == 2
    assert f["removed"]["reference_chars"] > 1000 and f["removed"]["page_number_lines"] == 6
    r0 = recs[0]
    assert set(r0) >= {"paper_id", "page", "chunk", "text", "n_chars", "removed", "source_sha256"}
    assert r0["paper_id"] == "2405.01234v1" and r0["chunk"] == 0 and r0["n_chars"] == len(r0["text"])


def test_papers_jsonl_titles_and_chunked_records(tmp_path):
    (tmp_path / "pdfs").mkdir()
    make_paper_pdf(tmp_path / "pdfs" / "2405.00001v1.pdf", pages=3, refs_on=None)
    (tmp_path / "papers.jsonl").write_text(json.dumps({"id": "2405.00001v1", "title": "Real Title",
                                                       "pdf_path": "pdfs/2405.00001v1.pdf"}) + "\n")
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), chunk_tokens=60, chunk_overlap=10, workers=1)
    report = run(cfg, progress=False)
    recs = list(read_jsonl(cfg.pages_path))
    assert report.files["2405.00001v1"]["title"] == "Real Title"
    assert max(r["chunk"] for r in recs) >= 3 and all(len(r["text"].split()) <= 60 for r in recs)
    assert len({(r["page"], r["chunk"]) for r in recs}) == len(recs)


def test_resume_reparses_only_new_or_changed_files_and_never_duplicates(tmp_path):
    d = tmp_path / "pdfs"
    d.mkdir()
    for name in ("a", "b", "c"):
        make_paper_pdf(d / f"{name}.pdf", pages=3, refs_on=None, title=f"Paper {name}")
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), workers=2)
    first = run(cfg, progress=False)
    assert first.totals["parsed_this_run"] == 3
    n_first = len(list(read_jsonl(cfg.pages_path)))

    again = run(cfg, progress=False)
    assert again.totals["parsed_this_run"] == 0 and again.totals["reused"] == 3
    assert len(list(read_jsonl(cfg.pages_path))) == n_first

    make_paper_pdf(d / "b.pdf", pages=5, refs_on=None, title="Paper b revised")  # changed
    make_paper_pdf(d / "d.pdf", pages=2, refs_on=None, title="Paper d")  # new
    (d / "c.pdf").unlink()  # removed
    third = run(cfg, progress=False)
    assert third.totals["parsed_this_run"] == 2 and third.totals["reused"] == 1
    recs = list(read_jsonl(cfg.pages_path))
    per_paper = {pid: sorted(r["page"] for r in recs if r["paper_id"] == pid) for pid in "abcd"}
    assert per_paper == {"a": [1, 2, 3], "b": [1, 2, 3, 4, 5], "c": [], "d": [1, 2]}
    assert set(third.files) == {"a", "b", "d"}
    assert {r["source_sha256"] for r in recs if r["paper_id"] == "b"} == {third.files["b"]["sha256"]}

    changed = ParseConfig.from_params(data_dir=str(tmp_path), workers=2, min_chars=50)  # new settings
    assert run(changed, progress=False).totals["parsed_this_run"] == 3


def test_a_run_killed_midway_leaves_no_duplicates_on_resume(tmp_path):
    d = tmp_path / "pdfs"
    d.mkdir()
    for name in ("a", "b"):
        make_paper_pdf(d / f"{name}.pdf", pages=3, refs_on=None, title=f"Paper {name}")
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), workers=1)
    run(cfg, progress=False)
    report = read_json(cfg.report_path)
    del report["files"]["b"]  # as if the run died after appending b's pages, before recording it
    Path(cfg.report_path).write_text(json.dumps(report))
    again = run(cfg, progress=False)
    assert again.totals["parsed_this_run"] == 1
    recs = list(read_jsonl(cfg.pages_path))
    assert sorted((r["paper_id"], r["page"]) for r in recs) == [("a", 1), ("a", 2), ("a", 3),
                                                               ("b", 1), ("b", 2), ("b", 3)]


# ---------------------------------------------------------------- hostile folders
def test_same_stem_in_two_cases_gives_two_ids_and_two_report_entries(tmp_path):
    d = tmp_path / "pdfs"
    d.mkdir()
    make_paper_pdf(d / "dup.pdf", pages=2, refs_on=None, title="Lower")
    make_paper_pdf(d / "dup.PDF", pages=3, refs_on=None, title="Upper")
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), workers=1)
    result = run(cfg, progress=False)
    assert set(result.files) == {"dup.pdf", "dup.PDF"}
    assert all(f["status"] == "ok" for f in result.files.values())
    pages = {}
    for r in read_jsonl(cfg.pages_path):
        pages.setdefault(r["paper_id"], []).append(r["page"])
    assert pages == {"dup.pdf": [1, 2], "dup.PDF": [1, 2, 3]}
    assert run(cfg, progress=False).totals["parsed_this_run"] == 0     # resume keys by the same ids


def test_a_second_copy_of_the_same_bytes_is_skipped_as_a_duplicate(tmp_path):
    d = tmp_path / "pdfs"
    d.mkdir()
    make_paper_pdf(d / "a.pdf", pages=2, refs_on=None)
    (d / "b.pdf").write_bytes((d / "a.pdf").read_bytes())
    result = run(ParseConfig.from_params(data_dir=str(tmp_path), workers=1), progress=False)
    assert result.files["a"]["status"] == "ok"
    assert result.files["b"]["reason"] == "duplicate" and "a.pdf" in result.files["b"]["detail"]


def test_a_link_leaving_pdf_dir_is_not_read_and_leaks_nothing(tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOPSECRET-password-1234 and more")
    d = tmp_path / "pdfs"
    d.mkdir()
    (d / "evil.pdf").symlink_to(secret)
    (d / "dangling.pdf").symlink_to(tmp_path / "nowhere.pdf")
    make_paper_pdf(d / "good.pdf", pages=2, refs_on=None)
    (d / "alias.pdf").symlink_to(d / "good.pdf")             # a link inside pdf_dir is fine (here: a duplicate)
    cfg = ParseConfig.from_params(data_dir=str(tmp_path), workers=1)
    result = run(cfg, progress=False)
    assert result.files["evil"]["reason"] == "link_outside_pdf_dir"
    assert result.files["dangling"]["reason"] == "link_outside_pdf_dir"
    assert result.files["good"]["status"] == "ok"
    assert result.files["alias"]["reason"] == "duplicate"
    assert "TOPSECRET" not in Path(cfg.report_path).read_text() and "TOPSECRET" not in result.summary()
