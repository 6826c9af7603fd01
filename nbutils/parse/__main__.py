"""`python -m nbutils.parse [--print-config] [--name value ...]`: run stage 02 from a shell."""
import sys

from ..config import stage_main
from .config import ParseConfig
from .stage import run

if __name__ == "__main__":
    sys.exit(stage_main(ParseConfig, run, sys.argv[1:], prog="python -m nbutils.parse",
                        description="Stage 02: PDFs -> clean page text (pages.jsonl) and parse_report.json"))
