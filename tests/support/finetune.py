"""Stage 04's test inputs: an original-format instruction JSON, the demo profile shrunk to sub-second steps,
the full profile, and the original project's recipe spelled with the stage's knobs."""
from __future__ import annotations

import json
from pathlib import Path

from nbutils.finetune import FinetuneConfig

TOPICS = ["graph neural networks", "diffusion models", "protein folding", "quantum error correction",
          "sparse attention", "federated learning", "speech recognition", "reinforcement learning",
          "causal inference", "image segmentation", "knowledge distillation", "contrastive learning",
          "neural radiance fields", "time series forecasting", "code generation"]


def write_original_json(data_dir: Path) -> Path:
    """30 short rows in the original project's {"Instruction","Input","Output"} format."""
    rows = []
    for t in TOPICS:
        rows.append({"Instruction": f"What problem does the paper on {t} address?", "Input": "",
                     "Output": f"The paper on {t} addresses the cost of training {t} models at scale."})
        rows.append({"Instruction": f"Summarise the main result about {t}.", "Input": f"Abstract: we study {t}.",
                     "Output": f"The main result is that {t} becomes twice as efficient with our method."})
    path = data_dir / "arxiv_instruction_dataset.json"
    path.write_text(json.dumps(rows))
    return path


def tiny_cfg(data_dir: Path, **kw) -> FinetuneConfig:
    """The demo profile shrunk so that one step takes well under a second on 2 cores."""
    params = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, max_length=128, per_device_train_batch_size=2,
                  per_device_eval_batch_size=4, max_eval_samples=4, logging_steps=1, eval_steps=100,
                  save_steps=100, warmup_steps=0)
    params.update(kw)
    return FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir), **params)


def full_cfg(tmp_path, **kw) -> FinetuneConfig:
    return FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), **kw)


# The original project's recipe: the `original` profile's overrides (one source: FinetuneConfig.PROFILE_OVERRIDES).
ORIGINAL_RECIPE = FinetuneConfig.overrides("original")
