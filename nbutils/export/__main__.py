"""`python -m nbutils.export [--print-config] [--name value ...]`: the export step from the command line."""
import sys

from ..config import stage_main
from .config import ExportConfig
from .stage import run

if __name__ == "__main__":
    sys.exit(stage_main(ExportConfig, run, sys.argv[1:], prog="python -m nbutils.export",
                        description="export: merged safetensors, GGUF, Ollama Modelfile, model card, Hub push"))
