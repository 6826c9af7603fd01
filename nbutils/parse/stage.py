"""Stage 02: PDFs -> clean, attributed page (or chunk) text in pages.jsonl, with a per-file parse_report.json.

Each PDF is parsed in a worker process (workers.py), cleaned (clean.py) and written as soon as it is done.
A rerun reparses only new or changed files (by sha256) and replaces, never duplicates, their records.
Files are data: a link leaving pdf_dir is not read, two files with one stem get distinct ids, and a second
copy of the same bytes is skipped as a duplicate.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import append_jsonl, read_json, read_records, sha256_file, sha256_text, write_json, write_jsonl
from ..lock import locked_stage
from .chunk import chunk_text
from .config import ParseConfig
from .result import ParseResult, summarize
from .workers import run_pool


@dataclass
class PdfFile:
    """One PDF of pdf_dir: its paper id (the stem; the file name when two files share a stem), its path,
    and a reason when it is skipped without being read."""

    paper_id: str
    path: Path
    skip: tuple[str, str] | None = None   # (reason, detail)


def list_pdfs(pdf_dir: str | Path) -> list[Path]:
    """Every `*.pdf` entry of pdf_dir (any case; files and links), sorted by name."""
    d = Path(pdf_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix.lower() == ".pdf" and (p.is_symlink() or p.is_file()))


def link_leaves(path: Path, pdf_dir: Path) -> bool:
    """True for a link whose target is missing or lies outside pdf_dir (it is never opened)."""
    if not path.is_symlink():
        return False
    target = path.resolve()
    return not target.is_file() or not target.is_relative_to(pdf_dir.resolve())


def discover(pdf_dir: str | Path) -> list[PdfFile]:
    """The PDFs with their ids; links leaving pdf_dir are marked skipped (their bytes are never read)."""
    paths = list_pdfs(pdf_dir)
    stems = Counter(p.stem for p in paths)
    out = []
    for p in paths:
        pid = p.stem if stems[p.stem] == 1 else p.name   # dup.pdf and dup.PDF: two papers, two ids
        skip = None
        if link_leaves(p, Path(pdf_dir)):
            skip = ("link_outside_pdf_dir", "a symbolic link whose target is missing or outside pdf_dir: not read "
                                            "(copy the file into pdf_dir instead)")
        out.append(PdfFile(pid, p, skip))
    return out


def mark_duplicates(pdfs: list[PdfFile], shas: dict[str, str]) -> None:
    """A second file with the same bytes as an earlier one (a link after a real file) is skipped: it would
    repeat every page, and one paper on both sides of the split."""
    first: dict[str, str] = {}
    for f in sorted(pdfs, key=lambda f: f.path.is_symlink()):
        if f.skip:
            continue
        sha = shas[f.paper_id]
        if sha in first:
            f.skip = ("duplicate", f"the same bytes as {first[sha]}: parsed once, under that file's id")
        else:
            first[sha] = f.path.name


PAPER_TITLE_SCHEMA = {"id": (str, type(None)), "title": (str, type(None)), "pdf_path": (str, type(None))}


def load_titles(papers_path: str | Path) -> dict[str, str]:
    """paper_id (PDF stem) -> title, from papers.jsonl when stage 01 made one."""
    titles = {}
    for rec in read_records(papers_path, PAPER_TITLE_SCHEMA):
        stem = Path(rec.get("pdf_path") or "").stem or str(rec.get("id", "")).replace("/", "_")
        if stem and rec.get("title"):
            titles[stem] = rec["title"]
    return titles


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        return {}
    try:
        return read_json(p)
    except ValueError:
        return {}


def plan_work(pdfs: list[PdfFile], shas: dict[str, str], report: dict[str, Any], cfg: ParseConfig,
              settings_hash: str) -> tuple[list[PdfFile], dict[str, dict]]:
    """Which files to parse now, and which previous results to keep."""
    old = report.get("files", {}) if report.get("settings_hash") == settings_hash and not cfg.force else {}
    todo, keep = [], {}
    for f in pdfs:
        prev = old.get(f.paper_id)
        unchanged = prev is not None and prev.get("sha256") == shas[f.paper_id]
        if unchanged and (prev.get("status") == "ok" or not cfg.retry_skipped):
            keep[f.paper_id] = {**prev, "parsed_in_last_run": False}
        else:
            todo.append(f)
    return todo, keep


def to_records(paper_id: str, sha: str, pages: list[dict], cfg: ParseConfig, tokenizer: Any | None) -> list[dict]:
    out = []
    for pg in pages:
        for k, chunk in enumerate(chunk_text(pg["text"], cfg.chunk_tokens, cfg.chunk_overlap, tokenizer)):
            out.append({"paper_id": paper_id, "page": pg["page"], "chunk": k, "text": chunk, "n_chars": len(chunk),
                        "removed": pg["removed"] if k == 0 else {}, "source_sha256": sha})
    return out


def _load_chunk_tokenizer(cfg: ParseConfig):
    if not cfg.chunk_tokens or not cfg.tokenizer:
        return None
    from ..models import load_tokenizer

    return load_tokenizer(cfg.tokenizer, cfg.data_dir)


def file_entry(f: PdfFile, sha: str, result: dict, records: list[dict], title: str | None) -> dict[str, Any]:
    """The report entry of one PDF."""
    entry = {"file": f.path.name, "sha256": sha, "status": result["status"], "title": title,
             "seconds": result.get("seconds"), "warnings": result.get("warnings", {}), "parsed_in_last_run": True}
    if result["status"] != "ok":
        entry.update(reason=result["reason"], detail=result["detail"])
        return entry
    entry.update(pages_total=result["pages_total"], pages_kept=len(result["pages"]),
                 pages_dropped_references=result["pages_dropped_references"],
                 pages_dropped_short=result["pages_dropped_short"], records=len(records),
                 chars_kept=sum(len(pg["text"]) for pg in result["pages"]), removed=result["removed"])
    return entry


def skipped_entry(f: PdfFile, sha: str | None) -> dict[str, Any]:
    reason, detail = f.skip  # type: ignore[misc]
    return {"file": f.path.name, "sha256": sha, "status": "skipped", "reason": reason, "detail": detail,
            "title": None, "seconds": 0.0, "warnings": {}, "parsed_in_last_run": False}


PAGE_KEY_SCHEMA = {"paper_id": str, "page": (int, type(None)), "chunk": (int, type(None))}


def keep_unchanged_records(pages_path: str | Path, files: dict[str, dict]) -> None:
    """Rewrite pages.jsonl with only the records of files kept from the last run: one copy of each page (a
    duplicate left by an older concurrent run is dropped), current sha; an odd line is skipped naming it."""
    kept = {pid: e["sha256"] for pid, e in files.items() if e["status"] == "ok"}
    seen: set = set()
    out = []
    for r in read_records(pages_path, PAGE_KEY_SCHEMA):
        ident = (r["paper_id"], r.get("page"), r.get("chunk"))
        if r["paper_id"] in kept and r.get("source_sha256") == kept[r["paper_id"]] and ident not in seen:
            seen.add(ident)
            out.append(r)
    write_jsonl(pages_path, out)


@locked_stage("02_parse")
def run(cfg: ParseConfig, progress: bool = True) -> ParseResult:
    """Parse new/changed PDFs of cfg.pdf_dir into cfg.pages_path; the report goes to cfg.report_path."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    settings = cfg.cleaning()
    settings_hash = sha256_text(repr(sorted(settings.items())))[:16]
    pdfs = discover(cfg.pdf_dir)
    shas = {f.paper_id: sha256_file(f.path) for f in pdfs if not f.skip}
    mark_duplicates(pdfs, shas)
    titles = load_titles(cfg.papers_path)
    previous = load_report(cfg.report_path)
    if previous.get("files") and previous.get("settings_hash") != settings_hash and not cfg.force:
        print(f"cleaning/loader settings changed since the last run: reparsing all {len(pdfs)} PDFs")
    readable = [f for f in pdfs if not f.skip]
    todo, files = plan_work(readable, shas, previous, cfg, settings_hash)
    for f in pdfs:
        if f.skip:
            files[f.paper_id] = skipped_entry(f, shas.get(f.paper_id))
            if progress:
                print(f"skipped {f.path.name}: {f.skip[0]}: {f.skip[1]}")
    keep_unchanged_records(cfg.pages_path, files)

    report = {"settings": settings, "settings_hash": settings_hash, "pdf_dir": str(cfg.pdf_dir), "files": files}
    tokenizer = _load_chunk_tokenizer(cfg)
    options = {**settings, "max_memory_mb": cfg.max_memory_mb}
    reused = len(readable) - len(todo)
    last_write = 0.0
    bar = tqdm(total=len(todo), desc=f"parse ({cfg.loader}, {cfg.n_workers()} workers)", unit="pdf",
               disable=not progress or not todo)
    by_path = {str(f.path): f for f in todo}
    for path_s, result in run_pool(list(by_path), options, cfg.n_workers(), cfg.timeout_s):
        f = by_path[path_s]
        pid = f.paper_id
        ok = result["status"] == "ok"
        records = to_records(pid, shas[pid], result["pages"], cfg, tokenizer) if ok else []
        append_jsonl(cfg.pages_path, records)
        files[pid] = file_entry(f, shas[pid], result, records, titles.get(f.path.stem))
        if not ok:
            bar.write(f"skipped {f.path.name}: {result['reason']}: {result['detail']}")
        bar.update(1)
        if time.monotonic() - last_write > 2:  # the report is the resume point: keep it fresh
            report["summary"] = summarize(files, time.perf_counter() - t0, bar.n, reused)
            write_json(cfg.report_path, report)
            last_write = time.monotonic()
    bar.close()
    report["files"] = dict(sorted(files.items()))
    report["summary"] = summarize(files, time.perf_counter() - t0, len(todo), reused)
    write_json(cfg.report_path, report)
    return ParseResult(report)
