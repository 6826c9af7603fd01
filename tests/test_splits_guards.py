"""Issue 27: a split the user made is never judged stale and replaced; a seed other than the existing split's is
refused; an original-format JSON with a BOM or in UTF-16 is split (nbutils/splits.py)."""
from __future__ import annotations

import json

import pytest

from nbutils.splits import load_split


def triples(n_papers: int = 6, per: int = 3) -> list[dict]:
    return [{"paper_id": f"p{p}", "page": i, "instruction": f"Question {p}.{i}?", "input": "",
             "output": f"Answer {p}.{i}."} for p in range(n_papers) for i in range(per)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def users_own_split(folder):
    from datasets import Dataset, DatasetDict

    row = {"instruction": "mine?", "input": "", "output": "mine.", "paper_id": "u", "page": 0}
    DatasetDict({"train": Dataset.from_list([row] * 3), "test": Dataset.from_list([row])}).save_to_disk(str(folder))


# ---------------------------------------------------------------------------------------------- item 2
def test_a_users_own_split_is_used_as_given_never_remade(tmp_path, capsys):
    write_jsonl(tmp_path / "triples.jsonl", triples())
    mine = tmp_path / "my_split"
    users_own_split(mine)
    before = sorted(p.name for p in mine.rglob("*"))
    dd = load_split(tmp_path, dataset_dir=mine)
    assert list(dd["train"]["instruction"]) == ["mine?"] * 3
    assert sorted(p.name for p in mine.rglob("*")) == before
    assert "not made by this project" in capsys.readouterr().out


def test_generate_refuses_a_users_split_as_dataset_dir_before_any_call(tmp_path):
    from nbutils.generate import GenerateConfig, run
    from nbutils.io import NotOurs

    write_jsonl(tmp_path / "pages.jsonl", [{"paper_id": "p", "page": 1, "text": "x" * 400}])
    mine = tmp_path / "my_split"
    users_own_split(mine)
    cfg = GenerateConfig.from_params(profile="full", data_dir=str(tmp_path), backend="openai", model="m",
                                     base_url="http://127.0.0.1:9/v1", dataset_dir=str(mine))
    with pytest.raises(NotOurs, match="dataset_dir=.*my_split"):
        run(cfg)
    assert not (tmp_path / "cache").exists()   # nothing was sent


# ---------------------------------------------------------------------------------------------- item 14
def test_a_seed_other_than_the_existing_splits_is_refused(tmp_path):
    write_jsonl(tmp_path / "triples.jsonl", triples())
    load_split(tmp_path, seed=42, verbose=False)
    with pytest.raises(ValueError, match="seed=7 but the split .* was made with seed 42"):
        load_split(tmp_path, seed=7, verbose=False)
    load_split(tmp_path, verbose=False)          # no seed asked for: the split as it is


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_an_original_json_with_a_bom_or_in_utf16_is_split(tmp_path, encoding):
    rows = [{"Instruction": f"Q{i}?", "Input": "", "Output": f"A{i}."} for i in range(10)]
    (tmp_path / "arxiv_instruction_dataset.json").write_bytes(json.dumps(rows).encode(encoding))
    dd = load_split(tmp_path, verbose=False)
    assert len(dd["train"]) + len(dd["test"]) == 10
