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
    assert list(again["test"]["instruction"]) == list(dd["test"]["instruction"])


def test_triples_jsonl_wins_and_splits_by_paper(tmp_path):
    (tmp_path / "triples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in triples()))
    dd = load_split(tmp_path, verbose=False)
    assert set(list(dd["train"]["paper_id"])).isdisjoint(list(dd["test"]["paper_id"]))


def test_missing_dataset_error_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="03_generate"):
        load_split(tmp_path)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        make_split([])


def write_triples(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_info(d):
    return json.loads((d / "dataset" / "split_info.json").read_text())


# ---------------------------------------------------------------- publishing is atomic
def test_a_failed_save_leaves_the_previous_split_whole(tmp_path, monkeypatch):
    import nbutils.splits as splits

    write_triples(tmp_path / "triples.jsonl", triples())
    old = load_split(tmp_path, verbose=False)
    old_info = read_info(tmp_path)
    dd, info = make_split(triples(n_papers=6, per_paper=3), seed=7)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(splits, "write_json", fail)         # dies after the Arrow files are written
    with pytest.raises(OSError, match="disk full"):
        splits.save_split(dd, info, tmp_path / "dataset")
    monkeypatch.undo()
    again = load_split(tmp_path, verbose=False)
    assert list(again["train"]["instruction"]) == list(old["train"]["instruction"])
    assert read_info(tmp_path) == old_info
    assert not (tmp_path / "dataset.partial").exists()


# ---------------------------------------------------------------- a split follows its source
def test_split_records_its_source_hash_and_is_remade_when_the_source_changes(tmp_path, capsys):
    from nbutils.io import sha256_file

    write_triples(tmp_path / "triples.jsonl", triples())
    load_split(tmp_path, verbose=False)
    assert read_info(tmp_path)["source_sha256"] == sha256_file(tmp_path / "triples.jsonl")
    load_split(tmp_path, verbose=False)
    assert "remaking" not in capsys.readouterr().out        # unchanged source: the frozen split is reused

    changed = [{**r, "instruction": r["instruction"] + " (v2)"} for r in triples()]
    write_triples(tmp_path / "triples.jsonl", changed)
    dd = load_split(tmp_path, verbose=False)
    out = capsys.readouterr().out
    assert "remaking the split" in out and "triples.jsonl changed" in out
    assert all(q.endswith("(v2)") for q in list(dd["train"]["instruction"]) + list(dd["test"]["instruction"]))
    assert read_info(tmp_path)["source_sha256"] == sha256_file(tmp_path / "triples.jsonl")


def test_a_split_made_before_hashes_keeps_its_seed_when_remade(tmp_path, capsys):
    write_triples(tmp_path / "triples.jsonl", triples(n_papers=10))
    first = load_split(tmp_path, seed=3, verbose=False)
    info = read_info(tmp_path)
    del info["source_sha256"]
    (tmp_path / "dataset" / "split_info.json").write_text(json.dumps(info))
    again = load_split(tmp_path, verbose=False)       # 05 passes no seed: the recorded one is kept
    assert "records no source hash" in capsys.readouterr().out
    assert list(again["test"]["paper_id"]) == list(first["test"]["paper_id"])
    assert read_info(tmp_path)["seed"] == 3 and "source_sha256" in read_info(tmp_path)


def test_a_json_with_the_wrong_keys_names_the_keys_found_and_expected(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"found \['answer', 'question'\], expected 'Instruction', 'Input', 'Output'"):
        load_split(tmp_path, verbose=False)
    assert not (tmp_path / "dataset").exists()
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps({"data": rows}))
    with pytest.raises(ValueError, match=r"found an object with keys \['data'\]"):
        load_split(tmp_path, verbose=False)


def test_rows_with_the_wrong_keys_are_skipped_by_name_and_the_rest_is_split(tmp_path, capsys):
    rows = [{"Instruction": f"q{i}", "Input": "", "Output": f"a{i}"} for i in range(10)]
    rows[4] = {"Question": "q4", "Answer": "a4"}
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    dd = load_split(tmp_path)
    assert "row 4 skipped: keys ['Answer', 'Question'] found" in capsys.readouterr().out
    instructions = list(dd["train"]["instruction"]) + list(dd["test"]["instruction"])
    assert len(instructions) == 9 and "" not in instructions
    assert read_info(tmp_path)["rows_skipped_bad_keys"] == 1


# ---------------------------------------------------------------- the original project's JSON gets 03's cleaning
def test_original_format_fields_get_the_reply_cleaning_and_the_count_is_reported(tmp_path, capsys):
    rows = [{"Instruction": f'"What does method {i} do?"', "Input": "",
             "Output": f'"It compresses the cache by {i}x."\n\n**'} for i in range(8)]
    rows += [{"Instruction": "Plain question?", "Input": "ctx", "Output": "Plain answer."}] * 2
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    dd = load_split(tmp_path)
    assert "cleaned 16 of 30 fields" in capsys.readouterr().out
    outputs = list(dd["train"]["output"]) + list(dd["test"]["output"])
    assert sorted(outputs)[:2] == ["It compresses the cache by 0x.", "It compresses the cache by 1x."]
    assert not any(o.startswith('"') or o.endswith("**") for o in outputs)
    assert read_info(tmp_path)["fields_cleaned"] == {"instruction": 8, "input": 0, "output": 8}


def test_an_emptied_source_is_refused_and_the_split_is_kept(tmp_path):
    write_triples(tmp_path / "triples.jsonl", triples())
    before = list(load_split(tmp_path, verbose=False)["test"]["instruction"])
    (tmp_path / "triples.jsonl").write_text("")                 # e.g. a 03 run where every page failed
    with pytest.raises(ValueError, match="triples.jsonl has no rows to split; .*dataset is left as it was"):
        load_split(tmp_path, verbose=False)
    from datasets import load_from_disk

    assert list(load_from_disk(str(tmp_path / "dataset"))["test"]["instruction"]) == before
