"""benchmarks/quality.py: the paperqa question/answer pairs reach stages 04/05 through the real split step, split by
paper (no paper on both sides), and the runner command it builds is the full profile with 04's overrides."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import quality
from nbutils.splits import load_split

PAPERQA = Path("/work/shared/datasets/paperqa")


def write_paperqa(folder: Path, papers_per_file: int = 5, rows_per_paper: int = 3) -> None:
    """Both files in paperqa's shape: an object whose "questions" rows name their source paper; one bad row each."""
    for f, name in enumerate(quality.PAPERQA_FILES):
        rows = [{"question": f"Q{f}.{p}.{i}: what does paper {p} propose?", "answer": f"Paper {p} proposes method {i}.",
                 "source_document": f"papers/25{f}0.{p:05d}v1.pdf", "mode": "textual", "content_refs": []}
                for p in range(papers_per_file) for i in range(rows_per_paper)]
        rows.append({"question": "", "answer": "an answer without its question", "source_document": "papers/x.pdf"})
        (folder / name).write_text(json.dumps({"corpus_name": name, "questions": rows}))


def test_prepare_then_split_keeps_every_paper_on_one_side(tmp_path):
    src, data_dir = tmp_path / "paperqa", tmp_path / "data"
    src.mkdir()
    data_dir.mkdir()
    write_paperqa(src)
    assert quality.main(["prepare", str(src), "--out", str(data_dir / "triples.jsonl")]) == 0
    rows, info = quality.paperqa_rows(src)
    assert info == {"rows": 30, "papers": 10, "skipped": 2, "per_file": {n: 15 for n in quality.PAPERQA_FILES}}
    dd = load_split(data_dir, verbose=False)
    train, test = set(dd["train"]["paper_id"]), set(dd["test"]["paper_id"])
    assert train and test and not train & test
    assert len(dd["train"]) + len(dd["test"]) == 30
    row = dd["train"][0]
    assert row["instruction"].startswith("Q") and row["output"].startswith("Paper") and row["input"] == ""
    info = json.loads((data_dir / "dataset" / "split_info.json").read_text())
    assert info["method"] == "by_paper" and info["source"].endswith("triples.jsonl")


def test_a_file_in_another_shape_is_named(tmp_path):
    write_paperqa(tmp_path)
    (tmp_path / quality.PAPERQA_FILES[1]).write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(ValueError, match="computational_biology_questions.json: expected an object"):
        quality.paperqa_rows(tmp_path)


def test_runner_command_is_the_full_profile_with_04_overrides(tmp_path):
    name, params = quality.parse_variant("accum1:gradient_accumulation_steps=1,05.max_new_tokens=256")
    assert name == "accum1" and params == {"gradient_accumulation_steps": "1", "05.max_new_tokens": "256"}
    cmd = quality.runner_command(tmp_path, "/m", params, 4, "04,05")
    assert cmd[1:8] == ["-m", "nbutils", "run", "--profile", "full", "--data-dir", str(tmp_path)]
    pairs = list(zip(cmd[::1], cmd[1::1]))
    for pair in [("--only", "04,05"), ("04.eval_steps", "4"), ("04.gradient_accumulation_steps", "1"),
                 ("05.max_new_tokens", "256"), ("base_model", "/m")]:
        assert pair in pairs
    with pytest.raises(ValueError, match="not key=value"):
        quality.parse_variant("x:lr")


def test_eval_curve_puts_each_eval_at_its_share_of_the_training_time():
    log = {"global_step": 20, "train_runtime_s": 40.0,
           "log": [{"step": 0, "eval_loss": 2.5}, {"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 2.0},
                   {"step": 20, "eval_loss": 1.75}]}
    assert quality.eval_curve(log) == [{"step": 0, "train_s": 0.0, "eval_loss": 2.5},
                                       {"step": 10, "train_s": 20.0, "eval_loss": 2.0},
                                       {"step": 20, "train_s": 40.0, "eval_loss": 1.75}]


@pytest.mark.skipif(not PAPERQA.is_dir(), reason="the shared paperqa folder is not on this machine")
def test_the_real_paperqa_folder():
    rows, info = quality.paperqa_rows(PAPERQA)
    assert info["rows"] == 1462 and info["papers"] == 382 and info["skipped"] == 0
