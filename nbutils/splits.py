"""The frozen train/test split (`data_dir/dataset/`) shared by 03, 04 and 05.

Columns: instruction, input, output, paper_id, page. Split by paper when provenance exists (no paper in
both splits); otherwise (an original-format JSON dropped into an empty data_dir) by row, seeded, and the
split's `split_info.json` says which. It also records the sha256 of the file the split was made from: when
that file changes, the split is remade (and the message says why). Rows without the expected keys are
skipped with a message naming the keys found and expected; fields of the original project's JSON get the
cleaning 03 applies to LLM replies (wrapping quotes, trailing `**`), and the split's info counts them.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .io import MARKER, DataPaths, atomic_folder, read_json, read_jsonl, sha256_file, write_json
from .triples import clean_field

COLUMNS = ("instruction", "input", "output", "paper_id", "page")
SPLIT_INFO = "split_info.json"
TEXT_FIELDS = ("instruction", "input", "output")
REQUIRED_FIELDS = ("instruction", "output")   # "input" may be absent (an empty context)
EXPECTED_KEYS = ("'Instruction', 'Input', 'Output' (the original project's JSON) or 'instruction', 'input', "
                 "'output' (triples.jsonl)")
MAX_ROW_MESSAGES = 5


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
    """Publish the split in one go (a killed run leaves the old split or none, never half of one). When
    `info` names its source file, the file's sha256 is recorded too (load_split remakes the split when it
    changes)."""
    dataset_dir = Path(dataset_dir)
    source = Path(info["source"]) if info.get("source") else None
    if source is not None and "source_sha256" not in info and source.is_file():
        info = {**info, "source_sha256": sha256_file(source)}
    with atomic_folder(dataset_dir, legacy=(SPLIT_INFO,)) as tmp:
        dd.save_to_disk(str(tmp))
        write_json(tmp / SPLIT_INFO, info)
    return dataset_dir


# ------------------------------------------------------------------------------------------------ sources
def find_source(paths: DataPaths) -> Path | None:
    """What a split is made from: triples.jsonl (03's output, by paper), else the original-format JSON."""
    for p in (paths.triples, paths.instruction_json):
        if p.exists():
            return p
    return None


def has_field(r: dict, name: str) -> bool:
    return name in r or name.capitalize() in r


def keep_rows_with_keys(records: list[Any], source: Path, verbose: bool = True) -> tuple[list[dict], int]:
    """The rows holding an instruction and an output under either format's keys. The others are skipped with
    a message naming the row and the keys it has; when no row has them, a ValueError names the keys found
    and the keys expected (instead of a split of empty strings)."""
    kept, bad = [], []
    for i, r in enumerate(records):
        if isinstance(r, dict) and all(has_field(r, k) for k in REQUIRED_FIELDS):
            kept.append(r)
        else:
            bad.append((i, sorted(r) if isinstance(r, dict) else type(r).__name__))
    if not kept and bad:
        found = sorted({k for _, keys in bad if isinstance(keys, list) for k in keys})
        raise ValueError(f"{source}: no row has the expected keys: found {found or 'no objects'}, expected "
                         f"{EXPECTED_KEYS}")
    if bad and verbose:
        for i, keys in bad[:MAX_ROW_MESSAGES]:
            print(f"{source.name}: row {i} skipped: keys {keys} found, expected {EXPECTED_KEYS}")
        if len(bad) > MAX_ROW_MESSAGES:
            print(f"{source.name}: ... and {len(bad) - MAX_ROW_MESSAGES} more rows without those keys")
    return kept, len(bad)


def clean_original_fields(records: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """The original project's rows with 03's reply cleaning (nbutils.triples.clean_field) applied to every
    instruction/input/output, and how many fields of each it changed."""
    changed = {k: 0 for k in TEXT_FIELDS}
    out = []
    for r in records:
        row = normalise_record(r)
        for k in TEXT_FIELDS:
            cleaned = clean_field(row[k])
            if cleaned != row[k]:
                changed[k] += 1
                row[k] = cleaned
        out.append(row)
    return out, changed


def read_source(source: Path, verbose: bool = True) -> tuple[list[dict], dict]:
    """The rows of `source` ready to split, and what reading them did (rows skipped, fields cleaned)."""
    if source.suffix == ".jsonl":
        records: Any = list(read_jsonl(source))
    else:
        records = read_json(source)
        if not isinstance(records, list):
            found = f"an object with keys {sorted(records)}" if isinstance(records, dict) else type(records).__name__
            raise ValueError(f"{source}: expected a JSON list of {{'Instruction','Input','Output'}} objects, "
                             f"found {found}")
    rows, n_bad = keep_rows_with_keys(records, source, verbose)
    notes: dict[str, Any] = {"rows_skipped_bad_keys": n_bad}
    if source.suffix != ".jsonl":
        rows, changed = clean_original_fields(rows)
        notes["fields_cleaned"] = changed
        if verbose and sum(changed.values()):
            print(f"{source.name}: cleaned {sum(changed.values())} of {len(rows) * len(TEXT_FIELDS)} fields "
                  f"(wrapping quotes, trailing markup; as 03 cleans LLM replies): "
                  + ", ".join(f"{k} {n}" for k, n in changed.items()))
    return rows, notes


def stale_reason(info: dict, source: Path | None) -> str | None:
    """Why a frozen split must be remade from `source` (None: it is current, or there is nothing to remake
    it from)."""
    if source is None:
        return None
    recorded = info.get("source_sha256")
    if not recorded:
        return f"its {SPLIT_INFO} records no source hash (made by an older version)"
    current = sha256_file(source)
    if current == recorded:
        return None
    made_from = Path(str(info.get("source") or "?")).name
    what = f"{source.name} changed" if made_from == source.name else \
        f"it was made from {made_from} and {source.name} is now the source"
    return f"{what} since it was made (sha256 {recorded[:12]} -> {current[:12]})"


def is_own_split(dataset_dir: Path) -> bool:
    """Made by this project (its marker, or the split_info.json every version wrote): may be remade. Any other
    saved DatasetDict is the user's own split: used as it is, never replaced."""
    return (dataset_dir / MARKER).exists() or (dataset_dir / SPLIT_INFO).exists()


def check_seed(info: dict, seed: int | None, dataset_dir: Path) -> None:
    """A seed asked for that differs from the one the existing split was made with is an error, not ignored."""
    made = info.get("seed")
    if seed is not None and made is not None and int(made) != int(seed):
        raise ValueError(f"seed={seed} but the split in {dataset_dir} was made with seed {made} (its "
                         f"{SPLIT_INFO}); the seed would not change which rows are held out. Use seed={made}, or "
                         f"move {dataset_dir} away to make a new split with seed {seed}")


def load_split(data_dir: str | Path = "data", dataset_dir: str | Path | None = None,
               test_size: float = 0.2, seed: int | None = None, verbose: bool = True):
    """The frozen split: `dataset/` if present and made from the current source; else made (and saved) from
    triples.jsonl (by paper) or from the original-format arxiv_instruction_dataset.json (by row). A remade split
    keeps the seed and test_size it was made with; a `seed` other than an existing split's is an error (None:
    any; a new split then uses 42). A split the project did not make is used as it is, never remade. Raises a
    clear error when there is nothing to split."""
    from datasets import load_from_disk

    paths = DataPaths(data_dir)
    dataset_dir = Path(dataset_dir) if dataset_dir else paths.dataset
    source = find_source(paths)
    if (dataset_dir / "dataset_dict.json").exists() and not is_own_split(dataset_dir):
        dd = load_from_disk(str(dataset_dir))
        if verbose:
            print(f"split from {dataset_dir} as given (not made by this project, so never remade): "
                  f"{len(dd['train'])} train / {len(dd['test'])} test")
        return dd
    if (dataset_dir / "dataset_dict.json").exists():
        info = read_json(dataset_dir / SPLIT_INFO) if (dataset_dir / SPLIT_INFO).exists() else {}
        check_seed(info, seed, dataset_dir)
        why = stale_reason(info, source)
        if why is None:
            dd = load_from_disk(str(dataset_dir))
            if verbose:
                print(f"split from {dataset_dir}: {len(dd['train'])} train / {len(dd['test'])} test "
                      f"({info.get('method', 'unknown method')})")
            return dd
        print(f"remaking the split in {dataset_dir}: {why}")
        test_size, seed = info.get("test_size", test_size), info.get("seed", seed)
    seed = 42 if seed is None else seed
    if source is None:
        raise FileNotFoundError(
            f"no dataset in {paths.root}: expected {dataset_dir}/, {paths.triples.name} or "
            f"{paths.instruction_json.name} (run notebooks/03_generate.ipynb first, or drop the original "
            f"project's JSON there)")
    records, notes = read_source(source, verbose)
    if not records:
        kept = f"; {dataset_dir} is left as it was" if (dataset_dir / "dataset_dict.json").exists() else ""
        raise ValueError(f"{source} has no rows to split{kept} (rerun notebooks/03_generate.ipynb, or restore "
                         f"the file)")
    dd, info = make_split(records, test_size, seed)
    info.update(source=str(source), source_sha256=sha256_file(source), **notes)
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
           "normalise_record", "read_source", "clean_original_fields", "stale_reason"]
