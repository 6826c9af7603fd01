import json
import os

import pytest

from nbutils.io import (
    PROJECT_ROOT,
    DataPaths,
    append_jsonl,
    atomic_write_text,
    read_jsonl,
    resolve_data_dir,
    write_jsonl,
)


def test_relative_data_dir_resolves_against_project_root_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("NBUTILS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("data") == PROJECT_ROOT / "data"
    monkeypatch.setenv("NBUTILS_HOME", str(tmp_path))
    assert resolve_data_dir("data") == tmp_path / "data"
    assert resolve_data_dir("/abs/x") == type(tmp_path)("/abs/x")


def test_data_paths_follow_the_pipeline_contract(tmp_path):
    p = DataPaths(tmp_path)
    names = {p.papers.name, p.pages.name, p.parse_report.name, p.triples.name, p.instruction_json.name}
    assert names == {"papers.jsonl", "pages.jsonl", "parse_report.json", "triples.jsonl",
                     "arxiv_instruction_dataset.json"}
    assert p.pdfs == tmp_path / "pdfs" and p.dataset == tmp_path / "dataset"
    assert p.reports == tmp_path / "reports" and p.models == tmp_path / "models"


def test_jsonl_roundtrip_and_torn_tail_from_a_killed_writer(tmp_path):
    f = tmp_path / "x.jsonl"
    append_jsonl(f, [{"a": 1}, {"a": 2}])
    with open(f, "a") as fh:
        fh.write('{"a": 3, "tor')  # killed mid-write
    assert [r["a"] for r in read_jsonl(f)] == [1, 2]
    append_jsonl(f, [{"a": 4}])  # the next append repairs the line break
    assert [r["a"] for r in read_jsonl(f)] == [1, 2, 4]


def test_corrupt_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_jsonl(f))


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "sub" / "f.txt", "hello")
    write_jsonl(tmp_path / "sub" / "r.jsonl", [{"k": "v"}])
    assert sorted(os.listdir(tmp_path / "sub")) == ["f.txt", "r.jsonl"]
    assert json.loads((tmp_path / "sub" / "r.jsonl").read_text()) == {"k": "v"}


def test_atomic_folder_replaces_on_success_and_keeps_the_old_on_error(tmp_path):
    from nbutils.io import atomic_folder

    target = tmp_path / "dataset"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
