import json

import pytest

from nbutils.splits import load_split, make_split, split_by_paper


def triples(n_papers=5, per_paper=4):
    return [{"paper_id": f"2405.0000{p}v1", "page": i + 1, "instruction": f"Q{p}-{i}", "input": "",
             "output": f"A{p}-{i}"} for p in range(n_papers) for i in range(per_paper)]


def test_split_by_paper_keeps_every_paper_on_one_side_and_is_seeded():
    train, test = split_by_paper(triples(), test_size=0.2, seed=1)
    assert {r["paper_id"] for r in train}.isdisjoint({r["paper_id"] for r in test})
    assert len(train) + len(test) == 20 and len({r["paper_id"] for r in test}) == 1
    assert split_by_paper(triples(), 0.2, 1) == (train, test)


def test_original_format_json_in_an_empty_data_dir_is_split_by_row_and_frozen(tmp_path):
    rows = [{"Instruction": f"q{i}", "Input": "", "Output": f"a{i}"} for i in range(10)]
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    dd = load_split(tmp_path, verbose=False)
    assert (len(dd["train"]), len(dd["test"])) == (8, 2)
    info = json.loads((tmp_path / "dataset" / "split_info.json").read_text())
    assert info["method"] == "by_row"
    (tmp_path / "arxiv_instruction_dataset.json").unlink()
    again = load_split(tmp_path, verbose=False)  # frozen: loaded back, not remade
    assert again["test"]["instruction"] == dd["test"]["instruction"]


def test_triples_jsonl_wins_and_splits_by_paper(tmp_path):
    (tmp_path / "triples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in triples()))
    dd = load_split(tmp_path, verbose=False)
    assert set(dd["train"]["paper_id"]).isdisjoint(dd["test"]["paper_id"])


def test_missing_dataset_error_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="03_generate"):
        load_split(tmp_path)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        make_split([])
