"""Stage 01: arXiv search results -> validated PDFs + papers.jsonl, politely, resumably, on its own hosts.

    cfg = ScrapeConfig.from_params(profile="demo", data_dir="data")
    result = run(cfg)                 # ScrapeResult: .summary(), .table(), .counts()

Modules: config (parameters), hosts (where it may go), http (throttle, retries, time limits), download (one
PDF), browser (Selenium + the driver guard), listing (search and /list/ pages), api (export API, Atom),
records (the papers.jsonl shape), store (files on disk), result, stage (the run).
"""
from .config import ScrapeConfig
from .errors import ScrapeError, redact
from .result import ScrapeResult
from .stage import run, scrape

__all__ = ["ScrapeConfig", "ScrapeError", "ScrapeResult", "redact", "run", "scrape"]
