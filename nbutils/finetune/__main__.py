"""`python -m nbutils.finetune [--print-config] [--name value ...]`: one training process (the same command runs
on every GPU under `accelerate launch --multi_gpu -m nbutils.finetune ...`). Values are typed and checked against
FinetuneConfig before anything is read or written."""
from __future__ import annotations

import os
import sys

from ..config import stage_main
from .config import FinetuneConfig

PROG = "python -m nbutils.finetune"
DESCRIPTION = "Stage 04 fine-tuning (also under `accelerate launch -m nbutils.finetune`)"


def train_in_this_process(cfg: FinetuneConfig):
    """One process's training; the result (shown by stage_main) from the main process only."""
    from .runtime import prefer_expandable_segments
    from .train import train

    prefer_expandable_segments()
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        cfg.show()
    result = train(cfg)
    return result if is_main else None


def main(argv: list[str] | None = None) -> int:
    return stage_main(FinetuneConfig, train_in_this_process, argv, PROG, DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
