"""The export step (after 05): the adapter 04 trained, as files other tools run.

    cfg = ExportConfig.from_params(profile="demo", data_dir="data")
    result = run(cfg)            # ExportResult: .summary(), .table(), .commands

    config.py   ExportConfig: parameters (05's "Publish what you evaluated" section uses the same names)
    inputs.py   the adapter, its base, the template, room on disk and in memory; the clear refusals
    merge.py    merged/: bf16/fp16 safetensors (streamed, or through PEFT for a 4-bit base), tokenizer with the
                training chat template, generation config
    gguf.py     GGUF f16 / bf16 / q8_0 / q4_0 with the `gguf` package (llama.cpp's own Python library)
    chat.py     the training template as Jinja (tokenizer, GGUF) and as Ollama's TEMPLATE + stops
    ollama.py   the Modelfile and the ollama / llama-cli / llama-server / llama-quantize commands
    card.py     README.md: Hub front matter, use, 05's table with intervals, training config, data provenance
    hub.py      create_repo + one commit (HF_TOKEN from the environment, private by default)
    tryit.py    the user's prompt to base and tuned side by side through the decoding engine
    stage.py    run(cfg) -> ExportResult (result.py); export.json records what was made from what
"""
from .config import GGUF_TYPES, MERGED_DTYPES, ExportConfig
from .inputs import (
                     AdapterOfAnotherBase,
                     ExportError,
                     MissingBase,
                     NoAdapter,
                     NotEnoughSpace,
                     UnsupportedArchitecture,
)
from .result import ExportResult
from .stage import run
from .tryit import side_by_side, side_by_side_markdown

__all__ = [
                     "GGUF_TYPES",
                     "MERGED_DTYPES",
                     "AdapterOfAnotherBase",
                     "ExportConfig",
                     "ExportError",
                     "ExportResult",
                     "MissingBase",
                     "NoAdapter",
                     "NotEnoughSpace",
                     "UnsupportedArchitecture",
                     "run",
                     "side_by_side",
                     "side_by_side_markdown",
]
