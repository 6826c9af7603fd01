"""One PDF: streamed under a size cap into a temp file in pdfs/, checked (type, length, %PDF-, %%EOF), hashed;
the version comes from Content-Disposition only when it names this paper. The caller renames it into place."""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..arxiv_ids import has_version
from ..io import sha256_file
from .errors import ScrapeError
from .http import HttpClient

PDF_CONTENT_TYPES = ("application/pdf", "application/x-pdf", "application/octet-stream", "binary/octet-stream")


def pdf_problem(path: Path, max_bytes: int) -> str | None:
    """Why the file is not an acceptable PDF (None when it is): size, %PDF- magic, %%EOF end marker."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if size > max_bytes:
        return f"larger than the {max_bytes / 2**20:g} MB cap"
    with open(path, "rb") as f:
        head = f.read(5)
        f.seek(max(0, size - 2048))
        tail = f.read()
    if head != b"%PDF-":
        return f"not a PDF (starts with {head!r})"
    if b"%%EOF" not in tail:
        return "truncated PDF (no %%EOF end marker)"
    return None


def disposition_id(header: str | None, wanted_base: str) -> str | None:
    """The versioned id from Content-Disposition (arxiv.org sends `filename="2405.01234v2.pdf"`; old ids
    without their slash), only when it names this paper. Only the version number is taken from the header."""
    m = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', header or "")
    if not m:
        return None
    name = m.group(1).strip().removesuffix(".pdf").strip()
    named = re.fullmatch(r"(.+)v(\d+)", name)
    if not named or named.group(1) not in {wanted_base, wanted_base.replace("/", ""), wanted_base.replace("/", "_")}:
        return None
    return f"{wanted_base}v{int(named.group(2))}"


@dataclass
class Fetched:
    tmp: Path
    sha256: str
    n_bytes: int
    final_id: str


def fetch_pdf(client: HttpClient, url: str, arxiv_id: str, pdf_dir: Path, max_bytes: int) -> Fetched:
    """Download to a temp file in pdf_dir (size-capped), validate it, resolve the version; caller renames.
    A gzip/deflate-encoded answer is decoded; its Content-Length is checked against the bytes on the wire."""
    tmp: Path | None = None
    try:
        with client.open(url, "PDF") as resp:
            if resp.status_code != 200:
                raise ScrapeError(f"HTTP {resp.status_code}")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype not in PDF_CONTENT_TYPES:
                raise ScrapeError(f"served {ctype or 'no content type'}, not a PDF")
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise ScrapeError(f"{declared / 2**20:.1f} MB is over the {max_bytes / 2**20:g} MB cap")
            pdf_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=pdf_dir, prefix=".download.", suffix=".tmp")
            tmp = Path(name)
            n = 0
            with os.fdopen(fd, "wb") as f:
                for block in resp.iter_content(1 << 16):
                    n += len(block)
                    if n > max_bytes:
                        raise ScrapeError(f"over the {max_bytes / 2**20:g} MB cap")
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            on_wire = resp.raw.tell()        # before decoding: what Content-Length counts
            if declared and on_wire != declared:
                raise ScrapeError(f"got {on_wire} of {declared} bytes")
            disposition = resp.headers.get("Content-Disposition")
        problem = pdf_problem(tmp, max_bytes)
        if problem:
            raise ScrapeError(problem)
        final_id = arxiv_id if has_version(arxiv_id) else (disposition_id(disposition, arxiv_id) or arxiv_id)
        return Fetched(tmp, sha256_file(tmp), n, final_id)
    except BaseException:
        if tmp:
            tmp.unlink(missing_ok=True)
        raise
