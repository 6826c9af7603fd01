"""`python -m nbutils.evaluate [--print-config] [--name value ...]`: stage 05 from the command line."""
import sys

from nbutils.config import stage_main

from . import EvaluateConfig, run

if __name__ == "__main__":
    sys.exit(stage_main(EvaluateConfig, run, sys.argv[1:], prog="python -m nbutils.evaluate",
                        description="05 evaluate: base vs tuned on the held-out split, with paired-bootstrap CIs"))
