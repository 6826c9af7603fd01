"""Stage 02 · parse: PDFs -> clean page text (pages.jsonl) and a per-file report (parse_report.json).

    cfg = ParseConfig.from_params(profile="demo", data_dir="data")
    result = run(cfg)            # ParseResult: .summary(), .table(), .files, .totals

Modules: config (ParseConfig), clean (the cleaning rules), chunk, loaders (one file -> text, never raises),
workers (the killable process pool), result (totals, ParseResult), stage (run).
"""
from .chunk import chunk_text
from .clean import clean_pages, cut_references, drop_running_lines, normalize_text, rejoin_hyphenated
from .config import LOADERS, ParseConfig
from .loaders import SKIP_REASONS, parse_file
from .result import ParseResult, page_lengths
from .stage import run
from .workers import run_pool

__all__ = ["ParseConfig", "ParseResult", "run", "parse_file", "run_pool", "clean_pages", "normalize_text",
           "drop_running_lines", "cut_references", "rejoin_hyphenated", "chunk_text", "page_lengths", "LOADERS",
           "SKIP_REASONS"]
