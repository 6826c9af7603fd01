"""What 03 sends: pages picked round-robin over papers (optionally cut into windows), each a job with a
cache key, and the reply cache those keys index."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..io import read_jsonl, read_records, sha256_text
from .config import GenerateConfig
from .prompts import PromptTemplate


@dataclass
class PageJob:
    paper_id: str
    page: int
    chunk: int
    key: str
    messages: list[dict]
    text: str = ""          # the page text the prompt holds (cut to max_input_chars): the judge and grounding read it


def split_windows(text: str, size: int) -> list[str]:
    """Cut text into windows of at most ~`size` characters at sentence ends (words when a sentence is longer);
    a short tail joins the window before it."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    windows: list[str] = []
    cur = ""
    for sent in sentences:
        while len(sent) > size:                    # one overlong sentence: cut at a word boundary
            cut = sent.rfind(" ", 0, size)
            cut = cut if cut > 0 else size
            if cur:
                windows.append(cur)
                cur = ""
            windows.append(sent[:cut])
            sent = sent[cut:].strip()
        if cur and len(cur) + 1 + len(sent) > size:
            windows.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}".strip()
    if cur:
        if windows and len(cur) < size // 3:
            windows[-1] = f"{windows[-1]} {cur}"
        else:
            windows.append(cur)
    return windows


def window_pages(pages: list[dict], size: int) -> list[dict]:
    """Each page longer than `size` characters becomes several records; window w of a page gets
    chunk = w (or source chunk * 100 + w when stage 02 already chunked it)."""
    out = []
    for p in pages:
        text = p.get("text") or ""
        if len(text) <= size:
            out.append(p)
            continue
        base = int(p.get("chunk", 0) or 0)
        for w, piece in enumerate(split_windows(text, size)):
            out.append({**p, "text": piece, "chunk": base * 100 + w if base else w})
    return out


# pages.jsonl, one record a line (docs/pipeline.md): a line that does not fit is skipped, naming file:line and why
PAGE_SCHEMA = {"paper_id": str, "page": (int, type(None)), "chunk": (int, type(None)), "text": str}


def load_pages(path: str | Path, bad: list | None = None) -> list[dict]:
    """The usable records of pages.jsonl; each odd line (not an object, page "iv", text 12345) is skipped with
    `file:line: skipped: reason` and listed in `bad`."""
    return list(read_records(path, PAGE_SCHEMA, skipped=bad))


def select_pages(pages: list[dict], max_pages: int = 0, min_chars: int = 200,
                 window_chars: int = 0) -> tuple[list[dict], Counter]:
    """Usable pages, deduplicated by (paper_id, page, chunk), optionally cut into windows of `window_chars`,
    taken round-robin over papers when capped (so a small `max_pages` still covers many papers).
    Returns the pages (or windows) and what was skipped, by reason."""
    skipped: Counter = Counter()
    seen: set = set()
    by_paper: dict[str, list[dict]] = defaultdict(list)
    for p in pages:
        ident = (str(p.get("paper_id", "")), int(p.get("page", 0) or 0), int(p.get("chunk", 0) or 0))
        if not ident[0]:
            skipped["no_paper_id"] += 1
            continue
        if ident in seen:
            skipped["duplicate_page"] += 1
            continue
        seen.add(ident)
        if len((p.get("text") or "").strip()) < min_chars:
            skipped["page_too_short"] += 1
            continue
        by_paper[ident[0]].append(p)
    if window_chars:
        by_paper = {k: window_pages(v, window_chars) for k, v in by_paper.items()}
    queues = [sorted(v, key=lambda r: (int(r.get("page", 0) or 0), int(r.get("chunk", 0) or 0)))
              for _, v in sorted(by_paper.items())]
    out: list[dict] = []
    depth = 0
    while any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    if max_pages and len(out) > max_pages:
        skipped["over_max_pages"] += len(out) - max_pages
        out = out[:max_pages]
    return out, skipped


def cache_key(model: str, prompt_version: str, params: dict, messages: list[dict]) -> str:
    return sha256_text(model, prompt_version, json.dumps(params, sort_keys=True),
                       json.dumps(messages, sort_keys=True, ensure_ascii=False))


def make_jobs(pages: list[dict], cfg: GenerateConfig, template: PromptTemplate) -> list[PageJob]:
    params = cfg.request_params()
    jobs = []
    for p in pages:
        text = " ".join((p.get("text") or "").split()) if cfg.backend == "local" else (p.get("text") or "").strip()
        text = text[: cfg.max_input_chars]
        messages = template.messages(text)
        jobs.append(PageJob(str(p["paper_id"]), int(p.get("page", 0) or 0), int(p.get("chunk", 0) or 0),
                            cache_key(cfg.model_name, template.version, params, messages), messages, text))
    return jobs


def load_cache(path: str | Path) -> dict[str, dict]:
    """Cached replies by key (the first record of a key wins: a duplicate from a raced run is ignored).
    A blank reply (stored by an older version) is not an answer: its page is called again."""
    out: dict[str, dict] = {}
    for rec in read_jsonl(path):
        if str(rec.get("reply") or "").strip():
            out.setdefault(rec["key"], rec)
    return out

