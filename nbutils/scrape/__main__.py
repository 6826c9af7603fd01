"""`python -m nbutils.scrape [--print-config] [--name value ...]`: run stage 01 (or print its configuration)."""
import sys

from ..config import stage_main
from .config import ScrapeConfig
from .stage import run

if __name__ == "__main__":
    sys.exit(stage_main(ScrapeConfig, run, sys.argv[1:], prog="python -m nbutils.scrape",
                        description="Stage 01: arXiv search results -> validated PDFs + papers.jsonl"))
