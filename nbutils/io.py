"""The data_dir contract (docs/pipeline.md) and small durable file helpers shared by every stage."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_data_dir(data_dir: str | os.PathLike) -> Path:
    """Absolute data_dir. A relative one is taken from $NBUTILS_HOME, else the project root of this
    checkout (so a notebook opened from notebooks/ and a papermill run from the root agree), else cwd."""
    p = Path(data_dir).expanduser()
    if p.is_absolute():
        return p
    home = os.environ.get("NBUTILS_HOME")
    if home:
        return (Path(home) / p).resolve()
    if (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "nbutils").is_dir():
        return (PROJECT_ROOT / p).resolve()
    return p.resolve()


@dataclass(frozen=True)
class DataPaths:
    """Every file name of docs/pipeline.md under one data_dir, defined once."""

    root: Path

    def __init__(self, data_dir: str | os.PathLike):
        object.__setattr__(self, "root", resolve_data_dir(data_dir))

    pdfs = property(lambda self: self.root / "pdfs")
    papers = property(lambda self: self.root / "papers.jsonl")
    scrape_report = property(lambda self: self.root / "scrape_report.json")
    pages = property(lambda self: self.root / "pages.jsonl")
    parse_report = property(lambda self: self.root / "parse_report.json")
    triples = property(lambda self: self.root / "triples.jsonl")
    triples_dropped = property(lambda self: self.root / "triples_dropped.jsonl")
    instruction_json = property(lambda self: self.root / "arxiv_instruction_dataset.json")
    generate_report = property(lambda self: self.root / "generate_report.json")
    dataset = property(lambda self: self.root / "dataset")
    models = property(lambda self: self.root / "models")
    base_models = property(lambda self: self.root / "models" / "base")
    adapter = property(lambda self: self.root / "models" / "adapter")
    checkpoints = property(lambda self: self.root / "models" / "checkpoints")
    merged = property(lambda self: self.root / "models" / "merged")
    export = property(lambda self: self.root / "export")
    reports = property(lambda self: self.root / "reports")
    cache = property(lambda self: self.root / "cache")
    runs = property(lambda self: self.root / "runs")


def ensure_parent(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temp file in the same folder + fsync + rename: readers never see half a file."""
    p = ensure_parent(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Write a folder in one go: yields `<target>.partial` to fill; on success it replaces `target` (the old
    one is moved aside, then removed), on an error it is deleted and `target` is left as it was."""
    out = Path(target)
    tmp = out.with_name(out.name + ".partial")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield records; a torn last line (a killed writer) is skipped, any other bad line raises."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                return  # torn tail from a killed process
            raise ValueError(f"{p}: line {i + 1} is not valid JSON ({e})") from e


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Replace the whole file atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    return atomic_write_text(path, text)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict], fsync: bool = True) -> int:
    """Append records durably (one write, flushed and fsynced); returns how many were written.
    First cuts off a torn last line left by a killed writer (that record was never complete)."""
    p = ensure_parent(path)
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    if not text:
        return 0
    drop_torn_tail(p)
    with open(p, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return text.count("\n")


def drop_torn_tail(path: str | os.PathLike) -> None:
    """Truncate a file after its last newline (removes a half-written final line)."""
    p = Path(path)
    if not p.exists() or not p.stat().st_size:
        return
    with open(p, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                f.truncate(pos + i + 1)
                return
        f.truncate(0)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
