"""`python -m nbutils.finetune [--print-config] [--name value ...]`: one training process (the same command runs
on every GPU under `accelerate launch --multi_gpu -m nbutils.finetune ...`). Values are typed and checked against
FinetuneConfig before anything is read or written."""
from __future__ import annotations

import json
import os
import sys

from ..config import ConfigValueError, config_from_argv
from .config import FinetuneConfig

PROG = "python -m nbutils.finetune"
DESCRIPTION = "Stage 04 fine-tuning (also under `accelerate launch -m nbutils.finetune`)"


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, print_only = config_from_argv(FinetuneConfig, argv, PROG, DESCRIPTION)
    except (ConfigValueError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if print_only:
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    from .runtime import prefer_expandable_segments
    from .train import train

    prefer_expandable_segments()
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        cfg.show()
    result = train(cfg)
    if is_main:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
