"""`python -m nbutils.finetune ...` and `accelerate launch -m nbutils.finetune ...`."""
import sys

from . import main

sys.exit(main())
