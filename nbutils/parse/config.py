"""What 02_parse can be told: one field per knob, its `full` default and help; the demo profile's overrides."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import StageConfig, option

LOADERS = ("pypdfium2", "pypdf", "pypdfloader")


@dataclass
class ParseConfig(StageConfig):
    """Everything 02_parse can be told; `None` paths default under data_dir (docs/pipeline.md names)."""

    PROFILE_OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "demo": {"timeout_s": 30.0, "max_memory_mb": 1024},
        "original": {"loader": "pypdfloader", "workers": 1},   # langchain's PyPDFLoader, one file after another
    }
    PATH_FIELDS: ClassVar[dict[str, str]] = {"pdf_dir": "pdfs", "papers_path": "papers",
                                             "pages_path": "pages", "report_path": "parse_report"}
    INPUT_FIELDS: ClassVar[tuple] = ('pdf_dir', 'papers_path', 'tokenizer')
    OUTPUT_FIELDS: ClassVar[tuple] = ('pages_path', 'report_path')

    pdf_dir: str | None = option(None, "folder of PDFs (None: data_dir/pdfs)")
    papers_path: str | None = option(None, "papers.jsonl, for titles only (None: data_dir/papers.jsonl)")
    pages_path: str | None = option(None, "output records (None: data_dir/pages.jsonl)")
    report_path: str | None = option(None, "per-file report (None: data_dir/parse_report.json)")
    loader: str = option("pypdfium2", "text extractor: pypdfium2 (fast), pypdf, or pypdfloader (langchain's)",
                         choices=LOADERS)
    workers: int = option(0, "parser processes; 0 = one per CPU core", ge=0)
    timeout_s: float = option(120.0, "per-file limit; the parser process is killed past it", gt=0)
    max_memory_mb: int = option(4096, "per parser process, above its start size (Linux RLIMIT_AS)", gt=0)
    normalize: bool = option(True, "ligatures (fi, fl, ...) and odd whitespace")
    drop_headers: bool = option(True, "running headers/footers and page numbers repeating across pages")
    header_min_fraction: float = option(0.4, "a top/bottom line on at least this share of pages is a header",
                                        gt=0, le=1)
    header_zone_lines: int = option(3, "lines at the top and bottom of a page looked at for headers", ge=0)
    drop_references: bool = option(True, "the References/Bibliography section and what follows it")
    keep_appendix: bool = option(False, "keep appendices found after the references")
    dehyphenate: bool = option(True, "rejoin words hyphenated across lines")
    min_chars: int = option(200, "pages shorter than this after cleaning are dropped", ge=0)
    chunk_tokens: int = option(0, "0 = one record per page; else chunks of this many tokens", ge=0)
    chunk_overlap: int = option(0, "tokens shared by consecutive chunks", ge=0)
    tokenizer: str | None = option(None, "HF tokenizer (id or folder) for chunking; None = whitespace tokens")
    retry_skipped: bool = option(False, "reparse files skipped last time even if unchanged")
    force: bool = option(False, "reparse everything")

    def __post_init__(self) -> None:
        super().__post_init__()
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
