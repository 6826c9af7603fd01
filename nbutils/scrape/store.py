"""What is on disk: pdfs/<id>.pdf and papers.jsonl. Paths read from papers.jsonl are data, not instructions:
a recorded pdf_path counts only when it resolves to a file directly inside pdf_dir."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from ..arxiv_ids import base_id, has_version, parse_arxiv_id, pdf_filename, version_of
from ..io import read_jsonl, sha256_file
from .config import ScrapeConfig
from .download import fetch_pdf, pdf_problem
from .http import HttpClient


def pdf_path_for(pdf_dir: str | os.PathLike, arxiv_id: str) -> Path:
    folder = Path(pdf_dir).resolve()
    path = (folder / pdf_filename(arxiv_id)).resolve()
    if path.parent != folder:
        raise ValueError(f"refusing file name for {arxiv_id!r}: it leaves {folder}")
    return path


def recorded_pdf(rec: dict[str, Any], cfg: ScrapeConfig) -> tuple[Path | None, str | None]:
    """(the file a record's pdf_path names, None) when it lies directly inside pdf_dir (symlinks resolved);
    else (None, why it is ignored). No pdf_path at all is (None, None)."""
    value = rec.get("pdf_path")
    if not value:
        return None, None
    if not isinstance(value, str):
        return None, f"pdf_path {value!r} is not a path"
    path = (Path(cfg.data_dir) / value).resolve()
    if path.parent != Path(cfg.pdf_dir).resolve():
        return None, f"pdf_path {value!r} is outside {cfg.pdf_dir}: ignored"
    return path, None


def load_existing(cfg: ScrapeConfig) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """papers.jsonl as {id: record} (a later line for the same id wins) and the (id, reason) of records
    left out because their pdf_path points outside pdf_dir or their id is not an arXiv id."""
    kept: dict[str, dict[str, Any]] = {}
    ignored: list[tuple[str, str]] = []
    for rec in read_jsonl(cfg.papers_path):
        pid = rec.get("id") if isinstance(rec, dict) else None
        if not pid:
            continue
        if not isinstance(pid, str) or not parse_arxiv_id(pid):
            ignored.append((str(pid), "not an arXiv id"))
            continue
        _, problem = recorded_pdf(rec, cfg)
        if problem:
            ignored.append((pid, problem))
            kept.pop(pid, None)
            continue
        kept[pid] = rec
    return kept, ignored


def find_existing(rec: dict[str, Any], existing: dict[str, dict[str, Any]], cfg: ScrapeConfig) -> dict | None:
    """A previous record for this paper whose PDF is still in pdf_dir, valid and unchanged (sha256); else a
    valid `pdfs/<id>.pdf` left without a record (papers.jsonl lost), described from the file itself."""
    want = rec["id"]
    max_bytes = int(cfg.max_pdf_mb * 2**20)
    candidates = [r for r in existing.values()
                  if r["id"] == want or (not has_version(want) and base_id(r["id"]) == want)]
    for old in sorted(candidates, key=lambda r: version_of(r["id"]), reverse=True):
        path, _ = recorded_pdf(old, cfg)
        if path and path.is_file() and not pdf_problem(path, max_bytes) \
                and (not old.get("sha256") or sha256_file(path) == old["sha256"]):
            return old
    stem = pdf_filename(want)[:-4]
    on_disk = [Path(cfg.pdf_dir) / f"{stem}.pdf"] if has_version(want) else \
        sorted(Path(cfg.pdf_dir).glob(f"{glob.escape(stem)}v*.pdf"), key=lambda p: version_of(p.stem), reverse=True)
    for path in on_disk:
        pid = want if has_version(want) else f"{want}v{version_of(path.stem)}"
        if version_of(pid) and parse_arxiv_id(pid) and path.is_file() and not path.is_symlink() \
                and not pdf_problem(path, max_bytes):
            return {"id": pid, "pdf_path": os.path.relpath(path, cfg.data_dir), "sha256": sha256_file(path)}
    return None


def remove_stale_downloads(pdf_dir: str | os.PathLike) -> None:
    """Temp files of a download that was killed mid-way (atomic writes leave nothing else behind)."""
    for tmp in Path(pdf_dir).glob(".download.*.tmp"):
        tmp.unlink(missing_ok=True)


def download_one(client: HttpClient, rec: dict[str, Any], cfg: ScrapeConfig) -> dict[str, Any]:
    """Fetch, validate and atomically place one PDF; returns the completed record (raises ScrapeError)."""
    pdf_dir = Path(cfg.pdf_dir)
    fetched = fetch_pdf(client, rec["pdf_url"], rec["id"], pdf_dir, int(cfg.max_pdf_mb * 2**20))
    try:
        rec["id"] = fetched.final_id
        dest = pdf_path_for(pdf_dir, rec["id"])
        os.chmod(fetched.tmp, 0o644)          # mkstemp makes 0600; a PDF is for everyone to read
        os.replace(fetched.tmp, dest)
    except BaseException:
        fetched.tmp.unlink(missing_ok=True)
        raise
    rec["pdf_path"] = os.path.relpath(dest, cfg.data_dir)
    rec["sha256"] = fetched.sha256
    return rec


def place_under_id(rec: dict[str, Any], cfg: ScrapeConfig) -> None:
    """Rename a PDF in pdf_dir when its id learnt its version later (abs page), so file stem == id. Only a
    file already inside pdf_dir is ever moved."""
    current, _ = recorded_pdf(rec, cfg)
    if current is None or not current.is_file():
        return
    wanted = pdf_path_for(cfg.pdf_dir, rec["id"])
    if current != wanted:
        os.replace(current, wanted)
        rec["pdf_path"] = os.path.relpath(wanted, cfg.data_dir)
