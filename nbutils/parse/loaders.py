"""Loading one PDF's text (runs inside a worker process): cheap byte checks, three loaders, and `parse_file`,
which loads + cleans one file and never raises (a bad file becomes a `skipped` result with its reason)."""
from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import fix_text
from .clean import clean_pages, fix_extraction_marks

SKIP_REASONS = ("empty_file", "not_pdf", "truncated", "encrypted", "corrupt", "no_pages", "no_text_layer",
                "timeout", "out_of_memory", "crashed", "error", "duplicate", "link_outside_pdf_dir")


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
                raw = [fix_text(t) for t in LOADER_FUNCS[options["loader"]](path)]   # no lone surrogates
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
