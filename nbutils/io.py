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


# ------------------------------------------------------------------------------------------------ ownership
MARKER = ".nbutils-output"   # in every folder the project made; only such a folder is ever replaced


class NotOurs(RuntimeError):
    """An output would replace a folder the project did not make: names the folder and what to do."""


def mark_ours(folder: str | os.PathLike, what: str = "") -> None:
    """Put the project's marker in a folder it made (atomic_folder does it for every folder it publishes)."""
    Path(folder, MARKER).write_text(f"made by nbutils{': ' + what if what else ''}; may be replaced by a rerun\n",
                                    encoding="utf-8")


def is_ours(folder: str | os.PathLike, legacy: Iterable[str] = ()) -> bool:
    """A folder the project may replace: absent, empty, marked, or holding a file only this project writes
    (`legacy`: folders made before the marker existed, e.g. a split's split_info.json)."""
    p = Path(folder)
    if not p.exists():
        return True
    if not p.is_dir():
        return False
    if (p / MARKER).exists() or any((p / name).exists() for name in legacy):
        return True
    return not any(p.iterdir())


def check_replaceable(folder: str | os.PathLike, legacy: Iterable[str] = (), param: str = "") -> None:
    """Raise NotOurs unless `folder` is one the project may replace (see is_ours)."""
    if not is_ours(folder, legacy):
        kind = "a file" if Path(folder).is_file() else "a folder this project did not make"
        name = f"{param}=" if param else ""
        target = param or "the output"
        raise NotOurs(f"{name}{folder} is {kind} (no {MARKER} marker): refusing to replace it. Point {target} "
                      "at a new or empty folder, or move that one away")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(path: Path, tag: str) -> Path:
    """`<path>.<tag>-<pid>`: a temporary name no other process uses at the same time."""
    return path.with_name(f"{path.name}.{tag}-{os.getpid()}")


def _drop_dead_temps(out: Path) -> None:
    """Remove `<out>.partial-<pid>` / `<out>.old-<pid>` left by processes that no longer run."""
    for p in out.parent.glob(f"{glob_escape(out.name)}.*-[0-9]*"):
        tag, _, pid = p.name[len(out.name) + 1:].rpartition("-")
        if tag in ("partial", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    import glob
    return glob.escape(name)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, legacy: Iterable[str] = ()) -> Iterator[Path]:
    """Write a folder in one go: yields `<target>.partial-<pid>` to fill; on success it replaces `target` (the
    old one is moved aside, then removed), on an error it is deleted and `target` is left as it was.
    The folder gets the project's marker; an existing `target` without it (and without a `legacy` file) is
    never replaced: NotOurs is raised before anything is written."""
    out = Path(target)
    check_replaceable(out, legacy)
    out.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_temps(out)
    tmp, old = temp_name(out, "partial"), temp_name(out, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        mark_ours(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        check_replaceable(out, legacy)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ paths
def contains(outer: str | os.PathLike, inner: str | os.PathLike) -> bool:
    """`inner` is `outer` or lies inside it (both resolved)."""
    o, i = Path(outer).resolve(), Path(inner).resolve()
    return o == i or o in i.parents


# ------------------------------------------------------------------------------------------------ text
def fix_text(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (from a PDF extractor, or a `\\ud800` escape in a JSON file)
    becomes U+FFFD; a proper surrogate pair becomes its character. Unchanged (and cheap) when already valid."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def fix_strings(obj: Any) -> Any:
    """fix_text applied to every string inside a JSON-like value."""
    if isinstance(obj, str):
        return fix_text(obj)
    if isinstance(obj, dict):
        return {fix_strings(k): fix_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fix_strings(v) for v in obj]
    return obj


def decode_text(data: bytes, path: str | os.PathLike = "") -> str:
    """A text file's bytes: UTF-8 (with or without a BOM) or UTF-16/32 (with a BOM, or UTF-16 without one,
    told by its zero bytes). A file that is none of these raises a ValueError naming it."""
    import codecs

    boms = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
            (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
    enc = next((name for bom, name in boms if data.startswith(bom)), None)
    if enc is None:
        head = data[:200]
        if len(head) >= 2 and head[1::2].count(0) > len(head) // 4:
            enc = "utf-16-le"
        elif len(head) >= 2 and head[0::2].count(0) > len(head) // 4:
            enc = "utf-16-be"
        else:
            enc = "utf-8"
    try:
        return data.decode(enc, "surrogatepass" if enc == "utf-8" else "strict")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 or UTF-16 text ({e.reason} at byte {e.start}); save it as UTF-8") \
            from None


def text_lines(text: str) -> list[str]:
    """Lines split on "\\n" only (str.splitlines also splits on U+2028 and others, which JSON strings may hold)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, fix_text(text).encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file in UTF-8 (a BOM allowed) or UTF-16; lone surrogates replaced; errors name the file."""
    text = decode_text(Path(path).read_bytes(), path)
    try:
        return fix_strings(json.loads(text))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield records; a torn last line (a killed writer) is skipped, any other bad line raises. Lone
    surrogates (escaped `\\ud800` in a line) are replaced, so no later writer or tokenizer chokes on them."""
    p = Path(path)
    for i, line, rec, err in json_lines(p):
        if err is not None:
            raise ValueError(f"{p}: line {i} is not valid JSON ({err})") from err
        yield fix_strings(rec) if "\\u" in line or not line.isascii() else rec


def json_lines(p: Path) -> Iterator[tuple[int, str, Any, json.JSONDecodeError | None]]:
    """(1-based line number, line, parsed value or None, JSON error or None) of each non-blank line; a torn last
    line (a killed writer) ends the file quietly."""
    if not p.exists():
        return
    lines = text_lines(decode_text(p.read_bytes(), p))
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield i + 1, line, json.loads(line), None
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                return  # torn tail from a killed process
            yield i + 1, line, None, e


class BadRecord(ValueError):
    """One record of a file that does not have the expected shape: names the file, the line and why."""


def check_record(rec: Any, schema: dict[str, type | tuple]) -> str | None:
    """Why `rec` does not fit `schema` (field -> type(s); a field may be absent only when None is allowed)."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    for name, want in schema.items():
        types = want if isinstance(want, tuple) else (want,)
        if name not in rec or rec[name] is None:
            if type(None) in types:
                continue
            return f"no {name!r}"
        value = rec[name]
        ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool))
                 for t in types if t is not type(None))
        if not ok:
            names = " or ".join(t.__name__ for t in types if t is not type(None))
            return f"{name}={value!r:.40}: expected {names}"
    return None


def read_records(path: str | os.PathLike, schema: dict[str, type | tuple], say=print,
                 skipped: list | None = None) -> Iterator[dict]:
    """The records of a JSONL file that fit `schema`; each other line (not an object, a field missing or of
    the wrong type, not JSON) is skipped with `file:line: reason`, and the rest go on."""
    p = Path(path)
    for i, _line, rec, err in json_lines(p):
        why = f"not valid JSON ({err.msg})" if err is not None else check_record(rec, schema)
        if why:
            msg = f"{p}:{i}: skipped: {why}"
            say(msg)
            if skipped is not None:
                skipped.append(msg)
            continue
        yield fix_strings(rec)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Replace the whole file atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    return atomic_write_text(path, text)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict], fsync: bool = True) -> int:
    """Append records durably (one write, flushed and fsynced); returns how many were written.
    First cuts off a torn last line left by a killed writer (that record was never complete)."""
    p = ensure_parent(path)
    text = fix_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
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


def safetensors_problem(path: Path) -> str | None:
    """A .safetensors file whose header does not parse or whose size is not what its header says (cut short)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes: cut short"
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            return f"{path.name}: header of {n} bytes does not fit in {size} bytes (cut short)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name}: header is not JSON (cut short or corrupt)"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name} is {size} bytes, its header says {8 + n + end}: cut short"
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(fix_text(part).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
