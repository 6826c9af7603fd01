"""`python -m nbutils.generate [--print-config] [--name value ...]`: run stage 03 from a shell."""
import sys

from ..config import stage_main
from .config import GenerateConfig
from .stage import run

if __name__ == "__main__":
    sys.exit(stage_main(GenerateConfig, run, sys.argv[1:], prog="python -m nbutils.generate",
                        description="Stage 03: pages.jsonl -> triples.jsonl, the original-format JSON, dataset/"))
