"""Issue 27 items 5 and 10 in 02: a lone surrogate in extracted PDF text never reaches a writer (02 writes the page
with U+FFFD, and 03 reads it back and keys it without an error); a rerun drops pages an old race duplicated."""
from __future__ import annotations

import json

from nbutils.io import append_jsonl, read_jsonl


def test_pdf_text_with_a_lone_surrogate_is_parsed_and_written(tmp_path, monkeypatch):
    from nbutils.parse import loaders

    pdf = tmp_path / "2401.00001.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + b"% padding\n" * 50 + b"%%EOF\n")
    page = ("Attention is computed with the math symbol \ud835 here. " * 20).strip()
    monkeypatch.setitem(loaders.LOADER_FUNCS, "pypdf", lambda path: [page, page.replace("math", "other")])
    result = loaders.parse_file(str(pdf), {"loader": "pypdf", "min_chars": 10})
    assert result["status"] == "ok", result
    text = result["pages"][0]["text"] if isinstance(result["pages"][0], dict) else result["pages"][0]
    assert "\ud835" not in json.dumps(text, ensure_ascii=False, default=str).encode("utf-8", "replace").decode()
    append_jsonl(tmp_path / "pages.jsonl", [{"paper_id": "2401.00001", "page": 1, "text": text}])
    (rec,) = read_jsonl(tmp_path / "pages.jsonl")
    assert "\ufffd" in rec["text"]


def test_generate_keys_a_page_that_holds_an_escaped_lone_surrogate(tmp_path):
    from nbutils.generate import GenerateConfig
    from nbutils.generate.jobs import load_pages, make_jobs

    (tmp_path / "pages.jsonl").write_text(json.dumps({"paper_id": "p", "page": 1, "text": "x\ud800y" * 100}) + "\n")
    cfg = GenerateConfig.from_params(profile="full", data_dir=str(tmp_path), backend="openai", model="m",
                                     base_url="http://127.0.0.1:9/v1")
    jobs = make_jobs(load_pages(tmp_path / "pages.jsonl"), cfg, cfg.template())
    assert len(jobs) == 1 and len(jobs[0].key) == 64


def test_a_rerun_drops_pages_duplicated_by_an_earlier_concurrent_run(tmp_path):
    """Issue 27 item 5: the lock stops a second run; duplicates an older race left are dropped on the rerun."""
    from nbutils.parse.stage import keep_unchanged_records

    rec = {"paper_id": "a", "page": 1, "chunk": 0, "text": "t", "source_sha256": "s"}
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (rec, rec, {**rec, "page": 2}, rec)))
    keep_unchanged_records(path, {"a": {"status": "ok", "sha256": "s"}})
    assert [r["page"] for r in read_jsonl(path)] == [1, 2]
