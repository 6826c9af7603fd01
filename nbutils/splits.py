"""The frozen train/test split (`data_dir/dataset/`) shared by 03, 04 and 05.

Columns: instruction, input, output, paper_id, page. Split by paper when provenance exists (no paper in
both splits); otherwise (an original-format JSON dropped into an empty data_dir) by row, seeded, and the
split's `info.json` says which.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from .io import DataPaths, read_json, read_jsonl, write_json

COLUMNS = ("instruction", "input", "output", "paper_id", "page")
SPLIT_INFO = "split_info.json"


def normalise_record(r: dict) -> dict:
    """Accept both the original's {"Instruction","Input","Output"} keys and triples.jsonl's lowercase ones."""
    get = lambda k: r.get(k, r.get(k.capitalize(), ""))  # noqa: E731
    return {
        "instruction": str(get("instruction") or ""),
        "input": str(get("input") or ""),
        "output": str(get("output") or ""),
        "paper_id": str(r.get("paper_id") or ""),
        "page": int(r.get("page") or 0),
    }


def split_by_paper(records: list[dict], test_size: float = 0.2, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Seeded split of whole papers: every triple of a paper lands on the same side."""
    by_paper: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_paper[r["paper_id"]].append(r)
    papers = sorted(by_paper)
    random.Random(seed).shuffle(papers)
    n_test = max(1, round(len(papers) * test_size)) if len(papers) > 1 else 0
    test_ids = set(papers[:n_test])
    train = [r for p in sorted(by_paper) if p not in test_ids for r in by_paper[p]]
    test = [r for p in sorted(by_paper) if p in test_ids for r in by_paper[p]]
    return train, test


def split_by_row(records: list[dict], test_size: float = 0.2, seed: int = 42) -> tuple[list[dict], list[dict]]:
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test = max(1, round(len(records) * test_size)) if len(records) > 1 else 0
    test_idx = set(idx[:n_test])
    return ([r for i, r in enumerate(records) if i not in test_idx],
            [r for i, r in enumerate(records) if i in test_idx])


def make_split(records: Iterable[dict], test_size: float = 0.2, seed: int = 42):
    """A DatasetDict(train, test) and a dict describing how it was made."""
    from datasets import Dataset, DatasetDict

    recs = [normalise_record(r) for r in records]
    if not recs:
        raise ValueError("no records to split: the dataset is empty")
    has_provenance = all(r["paper_id"] for r in recs) and len({r["paper_id"] for r in recs}) > 1
    train, test = (split_by_paper if has_provenance else split_by_row)(recs, test_size, seed)
    info = {"method": "by_paper" if has_provenance else "by_row", "seed": seed, "test_size": test_size,
            "n_train": len(train), "n_test": len(test),
            "train_papers": len({r["paper_id"] for r in train}), "test_papers": len({r["paper_id"] for r in test})}
    empty = {c: [] for c in COLUMNS}
    dd = DatasetDict({
        "train": Dataset.from_list(train) if train else Dataset.from_dict(empty),
        "test": Dataset.from_list(test) if test else Dataset.from_dict(empty),
    })
    return dd, info


def save_split(dd, info: dict, dataset_dir: str | Path) -> Path:
    dataset_dir = Path(dataset_dir)
    dd.save_to_disk(str(dataset_dir))
    write_json(dataset_dir / SPLIT_INFO, info)
    return dataset_dir


def load_split(data_dir: str | Path = "data", dataset_dir: str | Path | None = None,
               test_size: float = 0.2, seed: int = 42, verbose: bool = True):
    """The frozen split: `dataset/` if present; else made (and saved) from triples.jsonl (by paper) or from
    the original-format arxiv_instruction_dataset.json (by row). Raises a clear error when none exists."""
    from datasets import load_from_disk

    paths = DataPaths(data_dir)
    dataset_dir = Path(dataset_dir) if dataset_dir else paths.dataset
    if (dataset_dir / "dataset_dict.json").exists():
        dd = load_from_disk(str(dataset_dir))
        if verbose:
            info = read_json(dataset_dir / SPLIT_INFO) if (dataset_dir / SPLIT_INFO).exists() else {}
            print(f"split from {dataset_dir}: {len(dd['train'])} train / {len(dd['test'])} test "
                  f"({info.get('method', 'unknown method')})")
        return dd
    if paths.triples.exists():
        source, records = paths.triples, list(read_jsonl(paths.triples))
    elif paths.instruction_json.exists():
        source, records = paths.instruction_json, read_json(paths.instruction_json)
        if not isinstance(records, list):
            raise ValueError(f"{source}: expected a JSON list of {{'Instruction','Input','Output'}} objects")
    else:
        raise FileNotFoundError(
            f"no dataset in {paths.root}: expected {dataset_dir}/, {paths.triples.name} or "
            f"{paths.instruction_json.name} (run notebooks/03_generate.ipynb first, or drop the original "
            f"project's JSON there)")
    dd, info = make_split(records, test_size, seed)
    info["source"] = str(source)
    save_split(dd, info, dataset_dir)
    if verbose:
        print(f"made split from {source.name}: {info['n_train']} train / {info['n_test']} test ({info['method']}, "
              f"seed {seed})" + ("; no paper provenance, so split by row" if info["method"] == "by_row" else ""))
    return dd


def dump_original_format(records: Iterable[dict], path: str | Path) -> Path:
    """Write the original project's JSON list of {"Instruction", "Input", "Output"}."""
    out = [{"Instruction": r["instruction"], "Input": r.get("input", ""), "Output": r["output"]} for r in records]
    return write_json(path, out, indent=2)


__all__ = ["load_split", "make_split", "save_split", "split_by_paper", "split_by_row", "dump_original_format",
           "normalise_record", "json"]
