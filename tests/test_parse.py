"""Stage 02 (nbutils.parse): each cleaning rule on crafted text, each kind of bad file, resume, and the
whole stage on multi-page PDFs the tests make with reportlab."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas

from nbutils.io import read_json, read_jsonl
from nbutils.parse import (
    ParseConfig,
    chunk_text,
    clean_pages,
    cut_references,
    drop_running_lines,
    normalize_text,
    parse_file,
    rejoin_hyphenated,
    run,
    run_pool,
)

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


# ---------------------------------------------------------------- cleaning rules on crafted text

def test_normalize_expands_ligatures_and_tidies_whitespace():
    text, st = normalize_text("e\ufb03cient \ufb01ne-tuning\u00a0of  \ufb02ows \t\n\n\n\nnext\u200b line  ")
    assert text == "efficient fine-tuning of flows\n\nnext line"
    assert st["ligatures"] == 3 and st["whitespace_chars"] > 0


def test_normalize_keeps_math_symbols_that_nfkc_would_change():
    text, _ = normalize_text("x² ∈ ℝ and α ≤ β")
    assert text == "x² ∈ ℝ and α ≤ β"


def test_dehyphenate_rejoins_words_split_at_line_end():
    text, n = rejoin_hyphenated("we learn a represen-\ntation of text")
    assert text == "we learn a representation of text" and n == 1


def test_dehyphenate_keeps_real_compounds_and_capitalised_parts():
    text, n = rejoin_hyphenated("a state-of-the-art model. Our state-of-the-\nart model uses BERT-\nBased parts")
    assert "state-of-the-art model uses BERT-Based" in text and n == 2
    assert "theart" not in text


def test_dehyphenate_leaves_dashes_and_numbers_alone():
    text, n = rejoin_hyphenated("pages 10-\n12 and a list -\nitem")
    assert text == "pages 10-\n12 and a list -\nitem" and n == 0


def test_running_headers_and_page_numbers_dropped_tolerant_of_digits():
    pages = [f"Smith et al. 2024 - Page {i} of 4\n" + "\n".join(body_lines(i, 6)) + f"\nunique {WORDS[i]} line\n{i}"
             for i in range(1, 5)]
    pages[0] = "arXiv:2405.01234v2 [cs.CL] 3 May 2024\n" + pages[0]
    out, stats = drop_running_lines(pages, min_fraction=0.5, zone=3)
    for i, text in enumerate(out, 1):
        assert "Smith et al." not in text and "arXiv:" not in text
        assert not text.endswith(f"\n{i}") and f"unique {WORDS[i]} line" in text
    assert sum(s["page_number_lines"] for s in stats) == 4
    assert sum(s["header_lines"] for s in stats) == 4 + 1  # 4 headers + the arXiv stamp


def test_a_repeated_line_in_mid_page_is_kept():
    pages = ["top a\n" + "\n".join(body_lines(1, 4)) + "\nRepeated sentence here\n" + "\n".join(body_lines(2, 4)),
             "top b\n" + "\n".join(body_lines(3, 4)) + "\nRepeated sentence here\n" + "\n".join(body_lines(4, 4))]
    out, _ = drop_running_lines(pages, zone=2)
    assert all("Repeated sentence here" in p for p in out)


def test_references_and_everything_after_are_cut():
    pages = ["\n".join(body_lines(1, 20)), "\n".join(body_lines(2, 10)) + "\nReferences\n[1] A. B. Title. 2020.",
             "[2] C. D. Other. 2021.\nA Proofs\nthe appendix text"]
    out, removed = cut_references(pages)
    assert "References" not in out[1] and body_lines(2, 10)[-1] in out[1]
    assert out[2] == "" and removed[2] > 0 and removed[0] == 0


def test_keep_appendix_keeps_text_after_the_references():
    pages = ["\n".join(body_lines(1, 20)), "\n".join(body_lines(2, 10)) + "\n7 References\n[1] A. B. Title. 2020.",
             "[2] C. D. Other. 2021.\nA Proofs of the Theorems\nthe appendix text"]
    out, _ = cut_references(pages, keep_appendix=True)
    assert "[2]" not in out[2] and "A Proofs of the Theorems\nthe appendix text" == out[2]


def test_an_early_references_mention_such_as_a_contents_list_is_not_a_cut():
    pages = ["Contents\nIntroduction\nReferences\n" + "\n".join(body_lines(1, 30)), "\n".join(body_lines(2, 30))]
    out, removed = cut_references(pages)
    assert out == pages and sum(removed) == 0


def test_clean_pages_drops_short_pages_and_each_rule_can_be_switched_off():
    pages = ["\n".join(body_lines(i, 4)) + f"\nan ex-\nample {WORDS[i]}\n" + "\n".join(body_lines(i + 5, 4))
             for i in range(3)] + ["tiny"]
    kept, drops = clean_pages(pages, min_chars=100)
    assert [p["page"] for p in kept] == [1, 2, 3] and drops["pages_dropped_short"] == 1
    assert "example" in kept[0]["text"] and kept[0]["removed"]["hyphen_joins"] == 1
    kept_raw, _ = clean_pages(pages, normalize=False, drop_headers=False, drop_references=False,
                              dehyphenate=False, min_chars=0)
    assert [p["text"] for p in kept_raw] == pages and all(not p["removed"] for p in kept_raw)


def test_chunking_by_whitespace_tokens_with_overlap():
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunk_text(text, chunk_tokens=10, overlap=3)
    assert chunks[0].split() == [f"w{i}" for i in range(10)]
    assert chunks[1].split()[:3] == ["w7", "w8", "w9"]
    assert chunks[-1] == "w21 w22 w23 w24" and len(chunks) == 4
    assert chunk_text(text, 0) == [text]


def test_chunking_with_a_real_tokenizer(embedded_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_path))
    text = " ".join(body_lines(3, 20))
    chunks = chunk_text(text, chunk_tokens=50, overlap=10, tokenizer=tok)
    assert len(chunks) > 2 and all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 52 for c in chunks)
    assert text.startswith(chunks[0]) and text.endswith(chunks[-1])


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


def slow_pdf(tag: int = 0) -> bytes:
    """One page with ~1.5M text operators: seconds of work for any parser (`tag` makes the bytes differ)."""
    return raw_pdf(b"BT /F1 12 Tf 72 700 Td (%d) Tj " % tag + b"(abc) Tj 1 0 Td " * 1_500_000 + b"ET")


def test_a_file_past_the_time_limit_is_killed_and_the_others_still_parse(tmp_path):
    (tmp_path / "slow.pdf").write_bytes(slow_pdf())
    good = make_paper_pdf(tmp_path / "good.pdf")
    results = dict(run_pool([str(tmp_path / "slow.pdf"), str(good)], options(), workers=1, timeout_s=0.5))
    slow = results[str(tmp_path / "slow.pdf")]
    assert slow["status"] == "skipped" and slow["reason"] == "timeout" and "0.5 s" in slow["detail"]
    assert results[str(good)]["status"] == "ok"


def test_a_memory_bomb_is_stopped_by_the_memory_limit(tmp_path):
    comp = zlib.compressobj(1)
    block = b" " * (1 << 24)
    stream = b"".join([comp.compress(b"BT /F1 12 Tf 72 700 Td (hi) Tj ET\n")] +
                      [comp.compress(block) for _ in range(12)] + [comp.flush()])  # 200 MB inflated
    (tmp_path / "bomb.pdf").write_bytes(raw_pdf(stream=stream))
    good = make_paper_pdf(tmp_path / "good.pdf")
    for loader in ("pypdfium2", "pypdf"):
        results = dict(run_pool([str(tmp_path / "bomb.pdf"), str(good)], options(loader=loader, max_memory_mb=64),
                                workers=2, timeout_s=60))
        bomb = results[str(tmp_path / "bomb.pdf")]
        assert bomb["status"] == "skipped", loader
        assert bomb["reason"] in ("out_of_memory", "corrupt") and ("memory" in bomb["detail"].lower()
                                                                  or "limit" in bomb["detail"].lower()), bomb
        assert results[str(good)]["status"] == "ok"


def test_parser_warnings_are_counted_not_printed(tmp_path, capfd):
    pdf = raw_pdf(b"BT /F1 12 Tf 72 700 Td (" + b"readable words " * 30 + b") Tj ET")
    broken = pdf.replace(b"startxref\n", b"startxref\n9").replace(b"0000000009 00000 n", b"0000000019 00000 n")
    (tmp_path / "warn.pdf").write_bytes(broken)
    result = parse_file(str(tmp_path / "warn.pdf"), options(loader="pypdf", min_chars=10))
    assert result["status"] == "ok" and sum(result["warnings"].values()) >= 1
    out, err = capfd.readouterr()
    assert out == "" and err == ""


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


def test_config_rejects_unknown_loader_and_bad_overlap(tmp_path):
    with pytest.raises(ValueError, match="loader"):
        ParseConfig.from_params(data_dir=str(tmp_path), loader="ocr")
    with pytest.raises(ValueError, match="chunk_overlap"):
        ParseConfig.from_params(data_dir=str(tmp_path), chunk_tokens=10, chunk_overlap=10)


# ---------------------------------------------------------------- hostile folders (issue 17)

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


KILL_PARSE = """
import sys
from nbutils.parse import ParseConfig, run
run(ParseConfig.from_params(data_dir=sys.argv[1], workers=2, timeout_s=600, loader="pypdf"), progress=False)
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_kill_9_of_the_main_process_leaves_no_parse_worker(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from nbutils.io import PROJECT_ROOT

    d = tmp_path / "pdfs"
    d.mkdir()
    for i in range(3):
        (d / f"slow{i}.pdf").write_bytes(slow_pdf(i))
    proc = subprocess.Popen([sys.executable, "-c", KILL_PARSE, str(tmp_path)], cwd=PROJECT_ROOT,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.monotonic() + 60, []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = _children(proc.pid)
            time.sleep(0.1)
        assert len(workers) >= 2, "the parse workers never started"
        time.sleep(0.5)                      # they are busy on the slow files now
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a parse worker outlived its killed parent"
    finally:
        for w in workers if "workers" in dir() else []:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_print_config_shows_the_resolved_profile(tmp_path):
    import subprocess
    import sys

    from nbutils.io import PROJECT_ROOT

    out = subprocess.run([sys.executable, "-m", "nbutils.parse", "--profile", "full", "--workers", "3",
                          "--data_dir", str(tmp_path), "--print-config"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout
    printed = json.loads(out)
    assert printed["workers"] == 3 and printed["timeout_s"] == 120.0 and printed["max_memory_mb"] == 4096
    assert printed["pages_path"] == str(tmp_path / "pages.jsonl")
    assert ParseConfig.from_params(profile="demo").timeout_s == 30.0
    assert not (tmp_path / "pages.jsonl").exists()          # printing runs nothing
