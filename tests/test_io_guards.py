"""Issue 27: nbutils/io.py never replaces a folder it did not make, writes and reads any text (lone surrogates,
a BOM, UTF-16), and skips an odd record naming file:line instead of dying."""
from __future__ import annotations

import json
import os

import pytest

from nbutils.io import MARKER, NotOurs, atomic_folder, read_json, read_jsonl, read_records, write_json, write_jsonl


# ---------------------------------------------------------------------------------------------- items 1, 2
def test_atomic_folder_never_replaces_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "thesis.pdf").write_bytes(b"%PDF years of work")
    with pytest.raises(NotOurs, match="precious"):
        with atomic_folder(mine) as tmp:
            (tmp / "x").write_text("new")
    assert (mine / "thesis.pdf").read_bytes() == b"%PDF years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]      # no temp folder left either


def test_atomic_folder_replaces_its_own_folder_and_marks_it(tmp_path):
    out = tmp_path / "out"
    for text in ("one", "two"):
        with atomic_folder(out) as tmp:
            (tmp / "f").write_text(text)
    assert (out / "f").read_text() == "two" and (out / MARKER).exists()


def test_atomic_folder_temp_names_are_unique_per_process(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        assert tmp.name == f"out.partial-{os.getpid()}"


def test_a_dead_process_partial_folder_is_cleaned_and_a_live_one_kept(tmp_path):
    dead = tmp_path / "out.partial-999999999"
    live = tmp_path / f"out.partial-{os.getppid()}"
    dead.mkdir()
    live.mkdir()
    with atomic_folder(tmp_path / "out"):
        pass
    assert not dead.exists() and live.exists()


# ---------------------------------------------------------------------------------------------- item 10
def test_lone_surrogates_never_reach_a_writer(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "page\ud800text"}])
    write_json(tmp_path / "b.json", {"text": "x\udfffy"})
    assert list(read_jsonl(tmp_path / "a.jsonl")) == [{"text": "page\ufffdtext"}]
    assert read_json(tmp_path / "b.json") == {"text": "x\ufffdy"}


def test_an_escaped_lone_surrogate_in_a_jsonl_is_replaced_on_reading(tmp_path):
    (tmp_path / "pages.jsonl").write_text('{"text": "a\\ud800b", "pair": "\\ud83d\\ude00"}\n')
    rec = next(read_jsonl(tmp_path / "pages.jsonl"))
    assert rec == {"text": "a\ufffdb", "pair": "\U0001F600"}
    rec["text"].encode("utf-8")   # a writer (or a tokenizer) takes it


# ---------------------------------------------------------------------------------------------- item 11
def test_odd_records_are_skipped_naming_file_line_and_reason(tmp_path, capsys):
    path = tmp_path / "pages.jsonl"
    path.write_text("\n".join([
        json.dumps({"paper_id": "p1", "page": 1, "text": "ok"}),
        json.dumps(["a", "list"]),
        json.dumps({"paper_id": "p1", "page": "iv", "text": "roman"}),
        json.dumps({"paper_id": "p1", "page": 3, "text": 12345}),
        "{not json",
        json.dumps({"paper_id": "p2", "page": 1, "text": "ok too"}),
    ]) + "\n")
    schema = {"paper_id": str, "page": (int, type(None)), "text": str}
    kept = list(read_records(path, schema))
    assert [r["paper_id"] for r in kept] == ["p1", "p2"]
    out = capsys.readouterr().out
    for line, why in ((2, "list"), (3, "page='iv'"), (4, "text=12345"), (5, "not valid JSON")):
        assert f"{path}:{line}: skipped" in out and why in out


def test_generate_skips_an_odd_page_line_and_goes_on(tmp_path, capsys):
    from nbutils.generate.jobs import load_pages

    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps([1]) + "\n" + json.dumps({"paper_id": "p", "page": 1, "text": "t"}) + "\n")
    bad: list = []
    assert len(load_pages(path, bad)) == 1 and "pages.jsonl:1" in bad[0]


def test_parse_titles_skip_an_odd_papers_line(tmp_path):
    from nbutils.parse.stage import load_titles

    path = tmp_path / "papers.jsonl"
    path.write_text(json.dumps(["x"]) + "\n" + json.dumps({"id": "2401.00001", "title": 7}) + "\n"
                    + json.dumps({"id": "2401.00002", "title": "T", "pdf_path": "pdfs/2401.00002.pdf"}) + "\n")
    assert load_titles(path) == {"2401.00002": "T"}


# ---------------------------------------------------------------------------------------------- item 14 (BOM)
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
def test_json_with_a_bom_or_in_utf16_is_read(tmp_path, encoding):
    rows = [{"Instruction": "Qué?", "Input": "", "Output": "Sí."}]
    (tmp_path / "d.json").write_bytes(json.dumps(rows, ensure_ascii=False).encode(encoding))
    assert read_json(tmp_path / "d.json") == rows


def test_undecodable_json_names_the_file(tmp_path):
    (tmp_path / "d.json").write_bytes(b'[{"a": "\xff\xfe\xfa"}]' * 3)
    with pytest.raises(ValueError, match="d.json"):
        read_json(tmp_path / "d.json")
