"""Stage 02: PDFs -> clean, attributed page (or chunk) text in pages.jsonl, with a per-file parse_report.json.

Each PDF is parsed in a worker process (a small pool of our own, so one file can be killed on its time limit
without losing the others), cleaned with switchable, counted rules, and written as soon as it is done. A rerun
reparses only new or changed files (by sha256) and replaces, never duplicates, their records.

Loaders: "pypdfium2" (PDFium's text layer, the fast default), "pypdf" (what langchain's PyPDFLoader calls,
without langchain), "pypdfloader" (langchain's PyPDFLoader itself, the original project's choice).
"""
from __future__ import annotations

import faulthandler
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import wait as _wait_any
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from .config import StageConfig
from .io import append_jsonl, read_json, read_jsonl, sha256_file, sha256_text, write_json, write_jsonl

LOADERS = ("pypdfium2", "pypdf", "pypdfloader")
SKIP_REASONS = ("empty_file", "not_pdf", "truncated", "encrypted", "corrupt", "no_pages", "no_text_layer",
                "timeout", "out_of_memory", "crashed", "error")


@dataclass
class ParseConfig(StageConfig):
    """Everything 02_parse can be told; `None` paths default under data_dir (PIPELINE.md names)."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "demo": {"timeout_s": 30.0, "max_memory_mb": 1024},
        "full": {"timeout_s": 120.0, "max_memory_mb": 4096},
    }
    PATH_FIELDS: ClassVar[dict[str, str]] = {"pdf_dir": "pdfs", "papers_path": "papers",
                                             "pages_path": "pages", "report_path": "parse_report"}

    pdf_dir: str | None = None
    papers_path: str | None = None          # used for titles only, when present
    pages_path: str | None = None
    report_path: str | None = None
    loader: str = "pypdfium2"               # "pypdfium2" | "pypdf" | "pypdfloader"
    workers: int = 0                        # parser processes; 0 = one per CPU core
    timeout_s: float = 60.0                 # per file; the worker is killed past it
    max_memory_mb: int = 2048               # per worker, above its start size (RLIMIT_AS)
    normalize: bool = True                  # ligatures (fi, fl, ...) and whitespace
    drop_headers: bool = True               # running headers/footers + page numbers repeating across pages
    header_min_fraction: float = 0.4        # a top/bottom line on >= this share of pages is a running header
    header_zone_lines: int = 3              # how many lines at the top and bottom of a page are looked at
    drop_references: bool = True            # the References/Bibliography section and what follows it ...
    keep_appendix: bool = False             # ... except appendices after it, when True
    dehyphenate: bool = True                # "repre-\nsentation" -> "representation"
    min_chars: int = 200                    # pages shorter than this after cleaning are dropped
    chunk_tokens: int = 0                   # 0 = one record per page; else chunks of this many tokens
    chunk_overlap: int = 0                  # tokens shared by consecutive chunks
    tokenizer: str | None = None            # HF tokenizer (id or folder) for chunking; None = whitespace
    retry_skipped: bool = False             # reparse files skipped last time even if unchanged
    force: bool = False                     # reparse everything

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loader not in LOADERS:
            raise ValueError(f"loader={self.loader!r}: expected one of {', '.join(LOADERS)}")
        if self.chunk_tokens and not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ValueError(f"chunk_overlap={self.chunk_overlap} must be >= 0 and < chunk_tokens={self.chunk_tokens}")

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def cleaning(self) -> dict[str, Any]:
        """The options that change the text: a change reparses every file."""
        keys = ("loader", "normalize", "drop_headers", "header_min_fraction", "header_zone_lines",
                "drop_references", "keep_appendix", "dehyphenate", "min_chars", "chunk_tokens",
                "chunk_overlap", "tokenizer")
        return {k: getattr(self, k) for k in keys}


# ----------------------------------------------------------------------------------------------------------
# Cleaning rules: pure functions on text, each returning what it removed
# ----------------------------------------------------------------------------------------------------------

LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
             "\ufb05": "st", "\ufb06": "st"}
_LIGATURE_RE = re.compile("[" + "".join(LIGATURES) + "]")
_ODD_SPACE_RE = re.compile(r"[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH_RE = re.compile(r"[\u200b-\u200d\u2060\ufeff]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HYPHEN_BREAK_RE = re.compile(r"\b([^\W\d_]{2,})-\n[ \t]*([^\W\d_][^\W_]*)")
_WORD_RE = re.compile(r"[^\W_][\w-]*")
_REFERENCES_RE = re.compile(r"^(?:\d{1,2}\.?|[IVX]{1,4}\.)?\s*(references|bibliography|works cited|literature cited|"
                            r"reference list|references and notes)\s*:?$", re.I)
_APPENDIX_RE = re.compile(r"^(?:(?:appendix|appendices|supplementary materials?|supplemental materials?)\b.*"
                          r"|[A-H](?:\.\d+)*\s+[A-Z][A-Za-z-]+(?:\s+[A-Za-z-]+){0,7})$")
_PAGE_NUMBER_RE = re.compile(r"^(?:page\s*)?[-\u2013\u2014(\[]?\s*(?:#|[ivxlc]{1,6})\s*[-\u2013\u2014)\]]?"
                             r"(?:\s*(?:of|/)\s*#)?$", re.I)
_ARXIV_STAMP_RE = re.compile(r"^arXiv:\s?\d{4}\.\d{4,5}(?:v\d+)?\s*\[[^\]]+\]\s*\d{1,2}\s*[A-Za-z]{3}\s*\d{4}$")


def fix_extraction_marks(text: str) -> str:
    """Loader quirks, not cleaning: PDFium marks a line-end hyphen as U+0002 and ends lines with CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "-\n")


def normalize_text(text: str) -> tuple[str, dict[str, int]]:
    """Ligature glyphs -> letters; odd spaces/control chars -> plain spaces; trailing/multiple spaces and
    runs of blank lines collapsed. Not full NFKC: that would also turn x² into x2 and ℝ into R."""
    ligatures = len(_LIGATURE_RE.findall(text))
    out = _LIGATURE_RE.sub(lambda m: LIGATURES[m.group()], text)
    before = len(out)
    out = out.replace("\u00ad\n", "-\n").replace("\u00ad", "")
    out = _ZERO_WIDTH_RE.sub("", out)
    out = _ODD_SPACE_RE.sub(" ", out)
    out = re.sub(r" {2,}", " ", out)
    out = "\n".join(line.strip() for line in out.split("\n"))
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, {"ligatures": ligatures, "whitespace_chars": before - len(out)}


def line_key(line: str) -> str:
    """What makes two header lines 'the same': case, spacing and digits (page numbers, years) ignored."""
    return re.sub(r"\d+", "#", re.sub(r"\s+", " ", line.strip().lower()))


def _zone_indices(lines: list[str], zone: int) -> list[int]:
    nonempty = [i for i, ln in enumerate(lines) if ln.strip()]
    return sorted(set(nonempty[:zone] + nonempty[-zone:])) if zone > 0 else []


def find_running_lines(pages: list[str], min_fraction: float = 0.4, zone: int = 3) -> set[str]:
    """Keys of lines that sit in the top/bottom `zone` lines of at least `min_fraction` of the pages
    (and of at least 2 pages): running headers, footers, page numbers."""
    if len(pages) < 2:
        return set()
    seen: Counter[str] = Counter()
    for text in pages:
        lines = text.split("\n")
        seen.update({line_key(lines[i]) for i in _zone_indices(lines, zone)})
    need = max(2, math.ceil(min_fraction * len(pages)))
    return {k for k, n in seen.items() if n >= need and k}


def drop_running_lines(pages: list[str], min_fraction: float = 0.4, zone: int = 3
                       ) -> tuple[list[str], list[dict[str, int]]]:
    """Remove repeating header/footer lines (and the arXiv margin stamp) from each page's top/bottom zone."""
    keys = find_running_lines(pages, min_fraction, zone)
    out, stats = [], []
    for text in pages:
        lines = text.split("\n")
        drop, st = set(), {"header_lines": 0, "page_number_lines": 0, "header_chars": 0}
        for i in _zone_indices(lines, zone):
            key = line_key(lines[i])
            if key in keys or _ARXIV_STAMP_RE.match(lines[i].strip()):
                drop.add(i)
                st["page_number_lines" if _PAGE_NUMBER_RE.match(key) else "header_lines"] += 1
                st["header_chars"] += len(lines[i]) + 1
        out.append("\n".join(ln for i, ln in enumerate(lines) if i not in drop).strip())
        stats.append(st)
    return out, stats


def find_references(pages: list[str], min_position: float = 0.3) -> tuple[int, int] | None:
    """(page index, line index) of the last References/Bibliography heading that lies past `min_position`
    of the paper's text (so a table of contents early on is never taken for it); None if there is none."""
    total = sum(len(p) for p in pages) or 1
    found, done = None, 0
    for pi, text in enumerate(pages):
        offset = 0
        for li, line in enumerate(text.split("\n")):
            if _REFERENCES_RE.match(line.strip()) and (done + offset) / total >= min_position:
                found = (pi, li)
            offset += len(line) + 1
        done += len(text)
    return found


def find_appendix(pages: list[str], start: tuple[int, int]) -> tuple[int, int] | None:
    """First appendix heading after `start` (page index, line index), or None."""
    for pi in range(start[0], len(pages)):
        lines = pages[pi].split("\n")
        for li in range(start[1] + 1 if pi == start[0] else 0, len(lines)):
            line = lines[li].strip()
            if len(line) < 80 and _APPENDIX_RE.match(line):
                return pi, li
    return None


def cut_references(pages: list[str], keep_appendix: bool = False) -> tuple[list[str], list[int]]:
    """Cut from the References heading to the end (or to the first appendix heading when keep_appendix).
    Returns the new pages (a page wholly inside the cut becomes '') and chars removed per page."""
    start = find_references(pages)
    removed = [0] * len(pages)
    if start is None:
        return list(pages), removed
    end = find_appendix(pages, start) if keep_appendix else None
    out = []
    for pi, text in enumerate(pages):
        lines = text.split("\n")
        keep = []
        for li, line in enumerate(lines):
            after_start = (pi, li) >= start
            before_end = end is None or (pi, li) < end
            if after_start and before_end:
                removed[pi] += len(line) + 1
            else:
                keep.append(line)
        out.append("\n".join(keep).strip())
    return out, removed


def word_vocabulary(texts: Iterable[str]) -> set[str]:
    """Lower-cased words of the texts; a hyphenated word also gives each pair of adjacent parts
    ('state-of-the-art' -> 'state-of', 'of-the', 'the-art'), so a line break inside it is recognised."""
    vocab: set[str] = set()
    for text in texts:
        for w in _WORD_RE.findall(text.lower()):
            vocab.add(w)
            if "-" in w:
                parts = w.split("-")
                vocab.update(f"{a}-{b}" for a, b in zip(parts, parts[1:]))
    return vocab


def rejoin_hyphenated(text: str, vocabulary: set[str] | None = None) -> tuple[str, int]:
    """Rejoin words split by a hyphen at a line end. The hyphen is kept when the second part is capitalised
    or the paper itself writes the hyphenated form ('state-of-the-art') and never the joined one."""
    vocab = vocabulary if vocabulary is not None else word_vocabulary([text])
    joins = 0

    def join(m: re.Match) -> str:
        nonlocal joins
        joins += 1
        a, b = m.group(1), m.group(2)
        hyphened, joined = f"{a}-{b}".lower(), f"{a}{b}".lower()
        keep = b[0].isupper() or (hyphened in vocab and joined not in vocab)  # 'BERT-\nBased' stays hyphened
        return f"{a}-{b}" if keep else f"{a}{b}"

    return _HYPHEN_BREAK_RE.sub(join, text), joins


def clean_pages(raw_pages: list[str], normalize: bool = True, drop_headers: bool = True,
                header_min_fraction: float = 0.4, header_zone_lines: int = 3, drop_references: bool = True,
                keep_appendix: bool = False, dehyphenate: bool = True, min_chars: int = 200,
                **_: Any) -> tuple[list[dict], dict[str, int]]:
    """Clean one paper's pages. Returns the kept pages [{page (1-based), text, removed}] and
    {pages_dropped_references, pages_dropped_short, removed (totals over all pages, dropped ones too)}."""
    pages = [fix_extraction_marks(p) for p in raw_pages]
    removed: list[dict[str, int]] = [{} for _ in pages]
    if normalize:
        for i, p in enumerate(pages):
            pages[i], st = normalize_text(p)
            removed[i].update(st)
    if drop_headers:
        pages, stats = drop_running_lines(pages, header_min_fraction, header_zone_lines)
        for r, st in zip(removed, stats):
            r.update(st)
    ref_pages = 0
    if drop_references:
        before = [bool(p.strip()) for p in pages]
        pages, cut = cut_references(pages, keep_appendix)
        for r, n in zip(removed, cut):
            r["reference_chars"] = n
        ref_pages = sum(1 for b, p in zip(before, pages) if b and not p.strip())
    if dehyphenate and any("-\n" in p for p in pages):
        vocab = word_vocabulary(pages)
        for i, p in enumerate(pages):
            pages[i], n = rejoin_hyphenated(p, vocab)
            removed[i]["hyphen_joins"] = n
    totals: Counter[str] = Counter()
    for r in removed:
        totals.update(r)
    kept, short = [], 0
    for i, text in enumerate(pages):
        if not text.strip() and drop_references and removed[i].get("reference_chars"):
            continue  # counted in ref_pages
        if len(text.strip()) < min_chars:
            short += 1
            continue
        kept.append({"page": i + 1, "text": text, "removed": {k: v for k, v in removed[i].items() if v}})
    info = {"pages_dropped_references": ref_pages, "pages_dropped_short": short,
            "removed": {k: v for k, v in totals.items() if v}}
    return kept, info


# ----------------------------------------------------------------------------------------------------------
# Chunking (optional)
# ----------------------------------------------------------------------------------------------------------

def token_spans(text: str, tokenizer: Any | None = None) -> list[tuple[int, int]]:
    """Character spans of the tokens: from a fast HF tokenizer's offsets, else of whitespace-separated words."""
    if tokenizer is None:
        return [m.span() for m in re.finditer(r"\S+", text)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(a, b) for a, b in enc["offset_mapping"] if b > a]


def chunk_text(text: str, chunk_tokens: int, overlap: int = 0, tokenizer: Any | None = None) -> list[str]:
    """Split into windows of `chunk_tokens` tokens, consecutive windows sharing `overlap` tokens."""
    if chunk_tokens <= 0:
        return [text]
    spans = token_spans(text, tokenizer)
    if len(spans) <= chunk_tokens:
        return [text]
    step, out = chunk_tokens - overlap, []
    for start in range(0, len(spans), step):
        window = spans[start:start + chunk_tokens]
        out.append(text[window[0][0]:window[-1][1]])
        if start + chunk_tokens >= len(spans):
            break
    return out


# ----------------------------------------------------------------------------------------------------------
# Loading one file (runs inside a worker process)
# ----------------------------------------------------------------------------------------------------------

class SkipFile(Exception):
    """A file that cannot give text: `reason` is one of SKIP_REASONS, the message says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def check_pdf_bytes(path: str | Path) -> None:
    """Cheap checks before any parser runs: empty, not a PDF, truncated (no %%EOF near the end)."""
    size = os.path.getsize(path)
    if size == 0:
        raise SkipFile("empty_file", "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(1024)
        f.seek(max(0, size - 2048))
        tail = f.read()
    if b"%PDF-" not in head:
        raise SkipFile("not_pdf", f"no %PDF- header; starts with {head[:16]!r}")
    if b"%%EOF" not in tail:
        raise SkipFile("truncated", f"no %%EOF in the last 2 KB of {size} bytes (incomplete download?)")


def load_pypdfium2(path: str) -> list[str]:
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as e:
        # PDFium reports some malformed files (e.g. an empty page tree) as password errors: let pypdf,
        # which reads more leniently, give the verdict (encrypted, corrupt, no pages) or the text.
        try:
            return load_pypdf(path)
        except SkipFile as skip:
            raise SkipFile(skip.reason, f"{skip.detail}; PDFium: {e}") from None
    try:
        texts = []
        for i in range(len(doc)):
            page = doc[i]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_bounded())
            textpage.close()
            page.close()
        return texts
    finally:
        doc.close()


def _open_pypdf(path: str):
    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("encrypted", "encrypted, needs a password")
        return reader
    except SkipFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise SkipFile("corrupt", f"pypdf cannot read it ({type(e).__name__}: {e})") from None


def load_pypdf(path: str) -> list[str]:
    """The text PyPDFLoader would give (it calls page.extract_text(extraction_mode="plain") and strips)."""
    reader = _open_pypdf(path)
    return [page.extract_text(extraction_mode="plain").strip() for page in reader.pages]


def load_pypdfloader(path: str) -> list[str]:
    """langchain's PyPDFLoader, one Document per page (the original project's loader)."""
    _open_pypdf(path)  # same encrypted/corrupt classification as "pypdf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.document_loaders import PyPDFLoader
    return [d.page_content for d in PyPDFLoader(path).load()]


LOADER_FUNCS: dict[str, Callable[[str], list[str]]] = {
    "pypdfium2": load_pypdfium2, "pypdf": load_pypdf, "pypdfloader": load_pypdfloader}


class _WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[_short(record.getMessage())] += 1


def _short(msg: str) -> str:
    return re.sub(r"\d+", "#", msg.strip().splitlines()[0] if msg.strip() else msg)[:160]


def parse_file(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """Load + clean one PDF; never raises: returns {status, reason?, detail?, pages, warnings, ...}."""
    t0 = time.perf_counter()
    counter = _WarningCounter()
    loggers = [logging.getLogger(n) for n in ("pypdf", "pypdfium2", "langchain_community")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [counter], False
        lg.setLevel(logging.WARNING)
    result: dict[str, Any] = {"status": "ok"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check_pdf_bytes(path)
                raw = LOADER_FUNCS[options["loader"]](path)
                if not raw:
                    raise SkipFile("no_pages", "the document has no pages")
                n_text = sum(len(re.sub(r"\s", "", fix_extraction_marks(t))) for t in raw)
                if n_text < 20 * len(raw):
                    raise SkipFile("no_text_layer", f"{n_text} text characters on {len(raw)} pages: image-only "
                                   "or scanned (no text layer; OCR is not attempted)")
                kept, drops = clean_pages(raw, **options)
                result.update(pages_total=len(raw), pages=kept, **drops)
            except SkipFile as e:
                result.update(status="skipped", reason=e.reason, detail=e.detail)
            except MemoryError:
                result.update(status="skipped", reason="out_of_memory",
                              detail=f"ran out of memory (limit {options.get('max_memory_mb')} MB above start)")
            except RecursionError:
                result.update(status="skipped", reason="corrupt", detail="structure nested too deeply (recursion)")
            except Exception as e:  # any parser failure on one file must not stop the batch
                reason = "corrupt" if type(e).__module__.startswith(("pypdf", "pypdfium2")) else "error"
                result.update(status="skipped", reason=reason, detail=f"{type(e).__name__}: {e}"[:500])
        for w in caught:
            counter.counts[_short(str(w.message))] += 1
    finally:
        for lg, (handlers, propagate, level) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
    result["warnings"] = dict(counter.counts)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


# ----------------------------------------------------------------------------------------------------------
# A small killable process pool: one task per worker at a time, a deadline per task
# ----------------------------------------------------------------------------------------------------------

def _limit_memory(max_memory_mb: int) -> None:
    if max_memory_mb <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vsz + max_memory_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError, ImportError):
        pass  # not Linux: no limit, the timeout still applies


def _worker_main(conn, options: dict[str, Any]) -> None:
    """Worker loop: receive a path, send back parse_file's result; stdout/stderr of C libraries silenced."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C / notebook interrupt goes to the parent
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # a forked notebook kernel's streams are not ours to use
    faulthandler.disable()  # a parser crash is reported by the parent, not dumped into the notebook/pytest
    _limit_memory(int(options.get("max_memory_mb", 0)))
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return
        if path is None:
            return
        conn.send(parse_file(path, options))


class _Worker:
    def __init__(self, ctx, options: dict[str, Any]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, options), daemon=True)
        self.proc.start()
        child.close()
        self.task: Any = None
        self.deadline = 0.0

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _exit_detail(code: int | None, options: dict[str, Any]) -> tuple[str, str]:
    """Why a worker died. Under a memory limit PDFium aborts when an allocation fails, so a worker killed
    by SIGABRT/SIGSEGV/SIGBUS/SIGKILL is reported as out of memory (the detail says it is inferred)."""
    limit = int(options.get("max_memory_mb", 0))
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        if limit > 0 and -code in (signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
            return "out_of_memory", (f"the parser process died ({sig}), most likely on hitting the "
                                     f"{limit} MB memory limit")
        return "crashed", f"the parser process died ({sig})"
    return "crashed", f"the parser process exited with code {code}"


def run_pool(paths: Iterable[str], options: dict[str, Any], workers: int, timeout_s: float
             ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse files in `workers` processes; yields (path, result) as each finishes. A file past `timeout_s`
    or whose worker dies gets a 'skipped' result and a fresh worker takes its place."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    todo = deque(paths)
    if not todo:
        return
    pool = [_Worker(ctx, options) for _ in range(max(1, min(workers, len(todo))))]
    try:
        while todo or any(w.task for w in pool):
            for w in pool:
                if w.task is None and todo:
                    w.task, w.deadline = todo.popleft(), time.monotonic() + timeout_s
                    w.conn.send(w.task)
            busy = [w for w in pool if w.task is not None]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            _wait_any([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s + 0.01)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                result = None
                if w.conn.poll():
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                if result is not None:
                    path, w.task = w.task, None
                    yield path, result
                    continue
                if not w.proc.is_alive():
                    w.proc.join()
                    reason, detail = _exit_detail(w.proc.exitcode, options)
                elif time.monotonic() >= w.deadline:
                    reason, detail = "timeout", f"no result within the {timeout_s:g} s limit; the parser was stopped"
                else:
                    continue
                path = w.task
                w.task = None
                w.stop(kill=True)
                pool[i] = _Worker(ctx, options)
                yield path, {"status": "skipped", "reason": reason, "detail": detail, "warnings": {},
                             "seconds": round(timeout_s if reason == "timeout" else 0.0, 3)}
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)


# ----------------------------------------------------------------------------------------------------------
# The stage: resume by sha256, write as we go, report
# ----------------------------------------------------------------------------------------------------------

def list_pdfs(pdf_dir: str | Path) -> list[Path]:
    d = Path(pdf_dir)
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".pdf") if d.is_dir() else []


def load_titles(papers_path: str | Path) -> dict[str, str]:
    """paper_id (PDF stem) -> title, from papers.jsonl when stage 01 made one."""
    titles = {}
    for rec in read_jsonl(papers_path):
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


def plan_work(pdfs: list[Path], report: dict[str, Any], cfg: ParseConfig, settings_hash: str
              ) -> tuple[list[Path], dict[str, dict], dict[str, str]]:
    """Which files to parse now, which previous results to keep, and the sha256 of every file."""
    old = report.get("files", {}) if report.get("settings_hash") == settings_hash and not cfg.force else {}
    shas = {p.stem: sha256_file(p) for p in pdfs}
    todo, keep = [], {}
    for p in pdfs:
        prev = old.get(p.stem)
        unchanged = prev is not None and prev.get("sha256") == shas[p.stem]
        if unchanged and (prev.get("status") == "ok" or not cfg.retry_skipped):
            keep[p.stem] = prev
        else:
            todo.append(p)
    return todo, keep, shas


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
    from .models import load_tokenizer

    return load_tokenizer(cfg.tokenizer, cfg.data_dir)


def summarize(files: dict[str, dict], seconds: float, parsed: int, reused: int) -> dict[str, Any]:
    ok = [f for f in files.values() if f["status"] == "ok"]
    removed: Counter[str] = Counter()
    for f in ok:
        removed.update(f.get("removed", {}))
    pages_parsed = sum(f.get("pages_total", 0) for f in files.values() if f.get("parsed_in_last_run"))
    return {
        "files": len(files), "ok": len(ok), "skipped": len(files) - len(ok),
        "skipped_by_reason": dict(Counter(f["reason"] for f in files.values() if f["status"] != "ok")),
        "pages_total": sum(f.get("pages_total", 0) for f in ok),
        "pages_kept": sum(f.get("pages_kept", 0) for f in ok),
        "pages_dropped_references": sum(f.get("pages_dropped_references", 0) for f in ok),
        "pages_dropped_short": sum(f.get("pages_dropped_short", 0) for f in ok),
        "records": sum(f.get("records", 0) for f in ok),
        "chars_kept": sum(f.get("chars_kept", 0) for f in ok),
        "removed": dict(removed),
        "warnings": sum(sum(f.get("warnings", {}).values()) for f in files.values()),
        "parsed_this_run": parsed, "reused": reused, "seconds_this_run": round(seconds, 2),
        "pages_per_s_this_run": round(pages_parsed / seconds, 1) if seconds > 0 and pages_parsed else None,
    }


def _file_entry(path: Path, sha: str, result: dict, records: list[dict], title: str | None) -> dict[str, Any]:
    entry = {"file": path.name, "sha256": sha, "status": result["status"], "title": title,
             "seconds": result.get("seconds"), "warnings": result.get("warnings", {}), "parsed_in_last_run": True}
    if result["status"] != "ok":
        entry.update(reason=result["reason"], detail=result["detail"])
        return entry
    entry.update(pages_total=result["pages_total"], pages_kept=len(result["pages"]),
                 pages_dropped_references=result["pages_dropped_references"],
                 pages_dropped_short=result["pages_dropped_short"], records=len(records),
                 chars_kept=sum(len(pg["text"]) for pg in result["pages"]), removed=result["removed"])
    return entry


def parse_pdfs(cfg: ParseConfig, progress: bool = True) -> dict[str, Any]:
    """Run the stage: parse new/changed PDFs of cfg.pdf_dir into cfg.pages_path; returns the report."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    settings = cfg.cleaning()
    settings_hash = sha256_text(repr(sorted(settings.items())))[:16]
    pdfs = list_pdfs(cfg.pdf_dir)
    titles = load_titles(cfg.papers_path)
    previous = load_report(cfg.report_path)
    if previous.get("files") and previous.get("settings_hash") != settings_hash and not cfg.force:
        print(f"cleaning/loader settings changed since the last run: reparsing all {len(pdfs)} PDFs")
    todo, files, shas = plan_work(pdfs, previous, cfg, settings_hash)
    for entry in files.values():
        entry["parsed_in_last_run"] = False

    # keep the records of unchanged files (one copy each, only the current sha); everything else goes
    kept_ids = {pid for pid, e in files.items() if e["status"] == "ok"}
    old = [r for r in read_jsonl(cfg.pages_path)
           if r.get("paper_id") in kept_ids and r.get("source_sha256") == files[r["paper_id"]]["sha256"]]
    write_jsonl(cfg.pages_path, old)

    report = {"settings": settings, "settings_hash": settings_hash, "pdf_dir": str(cfg.pdf_dir), "files": files}
    tokenizer = _load_chunk_tokenizer(cfg)
    options = {**settings, "max_memory_mb": cfg.max_memory_mb}
    last_write = 0.0
    bar = tqdm(total=len(todo), desc=f"parse ({cfg.loader}, {cfg.n_workers()} workers)", unit="pdf",
               disable=not progress or not todo)
    by_path = {str(p): p for p in todo}
    for path_s, result in run_pool([str(p) for p in todo], options, cfg.n_workers(), cfg.timeout_s):
        path = by_path[path_s]
        pid = path.stem
        records = to_records(pid, shas[pid], result.get("pages", []), cfg, tokenizer) if result["status"] == "ok" else []
        append_jsonl(cfg.pages_path, records)
        files[pid] = _file_entry(path, shas[pid], result, records, titles.get(pid))
        if result["status"] != "ok":
            bar.write(f"skipped {path.name}: {result['reason']}: {result['detail']}")
        bar.update(1)
        if time.monotonic() - last_write > 2:  # the report is the resume point: keep it fresh
            report["summary"] = summarize(files, time.perf_counter() - t0, bar.n, len(files) - bar.n)
            write_json(cfg.report_path, report)
            last_write = time.monotonic()
    bar.close()
    report["files"] = dict(sorted(files.items()))
    report["summary"] = summarize(files, time.perf_counter() - t0, len(todo), len(pdfs) - len(todo))
    write_json(cfg.report_path, report)
    return report


# ----------------------------------------------------------------------------------------------------------
# What the notebook shows
# ----------------------------------------------------------------------------------------------------------

def report_table(report: dict[str, Any]):
    """One row per PDF: status, reason, pages, kept, warnings (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for pid, f in report.get("files", {}).items():
        rows.append({"paper_id": pid, "status": f["status"], "reason": f.get("reason", ""),
                     "pages": f.get("pages_total"), "kept": f.get("pages_kept"), "records": f.get("records"),
                     "warnings": sum(f.get("warnings", {}).values()), "seconds": f.get("seconds"),
                     "detail": f.get("detail", "")})
    return pd.DataFrame(rows)


def print_summary(report: dict[str, Any]) -> None:
    s = report["summary"]
    if not s["files"]:
        print(f"no PDFs in {report.get('pdf_dir')}: run 01_scrape first, or put PDFs there")
        return
    print(f"{s['files']} PDFs: {s['ok']} ok, {s['skipped']} skipped {s['skipped_by_reason'] or ''}")
    print(f"pages: {s['pages_total']} in ok files -> {s['pages_kept']} kept "
          f"({s['pages_dropped_references']} references/after, {s['pages_dropped_short']} too short); "
          f"{s['records']} records, {s['chars_kept']:,} chars")
    print(f"this run: parsed {s['parsed_this_run']}, reused {s['reused']} unchanged, "
          f"{s['seconds_this_run']} s, {s['pages_per_s_this_run'] or '-'} pages/s; "
          f"{s['warnings']} parser warnings captured (per file in the report)")


def removed_chars(report: dict[str, Any]) -> dict[str, int]:
    """Characters each cleaning rule removed over all ok files (a rejoined word loses '-' and a newline)."""
    r = report["summary"]["removed"]
    return {"references (and after)": r.get("reference_chars", 0),
            "running headers / page numbers": r.get("header_chars", 0),
            "whitespace": r.get("whitespace_chars", 0),
            "line-end hyphens": 2 * r.get("hyphen_joins", 0)}


def cleaning_events(report: dict[str, Any]) -> dict[str, int]:
    """How many times each rule fired over all ok files."""
    r = report["summary"]["removed"]
    return {"hyphenated words rejoined": r.get("hyphen_joins", 0), "ligatures expanded": r.get("ligatures", 0),
            "header/footer lines dropped": r.get("header_lines", 0),
            "page-number lines dropped": r.get("page_number_lines", 0),
            "pages dropped (references)": report["summary"]["pages_dropped_references"],
            "pages dropped (too short)": report["summary"]["pages_dropped_short"]}


def page_lengths(pages_path: str | Path) -> list[int]:
    return [r["n_chars"] for r in read_jsonl(pages_path)]


__all__ = ["ParseConfig", "parse_pdfs", "parse_file", "clean_pages", "normalize_text", "drop_running_lines",
           "cut_references", "rejoin_hyphenated", "chunk_text", "report_table", "print_summary", "removed_chars",
           "cleaning_events",
           "page_lengths", "LOADERS", "SKIP_REASONS"]
