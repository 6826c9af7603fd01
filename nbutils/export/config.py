"""Parameters of the export step (05's "Publish what you evaluated" section; `python -m nbutils.export`).
A field holds the value of every profile: what is exported follows from the adapter, not from the profile."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import StageConfig, option

MERGED_DTYPES = ("bfloat16", "float16")
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0")   # what the `gguf` package can write here (no k-quants: see gguf.py)


@dataclass
class ExportConfig(StageConfig):
    """Adapter + base -> merged safetensors, GGUF files, an Ollama Modelfile, a model card; optionally the Hub."""

    PROFILE_OVERRIDES: ClassVar[dict] = {}   # the base comes from the adapter's records in every profile
    PATH_FIELDS: ClassVar[dict] = {"adapter_dir": "adapter", "reports_dir": "reports", "dataset_dir": "dataset",
                                   "export_dir": "export"}
    INPUT_FIELDS: ClassVar[tuple] = ("adapter_dir", "reports_dir", "dataset_dir", "base_model")
    OUTPUT_FIELDS: ClassVar[tuple] = ("export_dir",)

    base_model: str | None = option(None, "hub id or local folder the adapter was trained on (checked against the "
                                    "adapter's records); None: the base 04 recorded in train_log.json")
    adapter_dir: str | None = option(None, "None: data_dir/models/adapter")
    reports_dir: str | None = option(None, "05's reports (metrics.json goes into the model card); None: "
                                     "data_dir/reports")
    dataset_dir: str | None = option(None, "the frozen split (its split_info.json is the card's data provenance); "
                                     "None: data_dir/dataset")
    export_dir: str | None = option(None, "where everything is written; None: data_dir/export")
    model_name: str | None = option(None, "file and Ollama model name; None: <base name>-arxiv-lora")
    dtype: str = option("bfloat16", "merged weights' dtype (a 4-bit base is dequantised to it, never "
                        "requantised)", choices=MERGED_DTYPES)
    template: str | None = option(None, "None: what 04 recorded in train_log.json, else alpaca")
    merge: bool = option(True, "write merged/ (safetensors + tokenizer + chat template + generation config); "
                         "written anyway when gguf_types asks for a GGUF (they are made from it)")
    gguf_types: list = option(["f16", "q8_0"], f"GGUF files to write ({', '.join(GGUF_TYPES)}); [] for none")
    ollama: bool = option(True, "write an Ollama Modelfile whose TEMPLATE and stops match the training template")
    card: bool = option(True, "write README.md: the model card with Hub front matter and 05's table")
    license: str | None = option(None, "the card's license; None: the base model's (its card, else known bases)")
    dataset_repo_id: str | None = option(None, "the Hub dataset id of the training data, for the card's front "
                                         "matter; None: not published")
    push_to_hub: bool = option(False, "upload the export to the Hub (HF_TOKEN from the environment)")
    hub_repo_id: str = option("", "the Hub repo to push to, e.g. 'you/llama3-arxiv'")
    hub_private: bool = option(True, "create the Hub repo private")
    hub_include_gguf: bool = option(True, "upload the GGUF files too (else merged weights + card + Modelfile)")
    check_space: bool = option(True, "refuse to start when free disk or memory is short (with the numbers)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [t for t in self.gguf_types if t not in GGUF_TYPES]
        if bad:
            raise ValueError(f"gguf_types={self.gguf_types!r}: {', '.join(map(repr, bad))} not one of "
                             f"{', '.join(GGUF_TYPES)} (a 4-bit k-quant such as Q4_K_M: llama.cpp's llama-quantize on "
                             "the f16 file; the export prints the command)")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub=True needs hub_repo_id (e.g. 'your-name/llama3-arxiv')")
