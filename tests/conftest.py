"""Shared fixtures. The embedded model is provisioned once under the project's data/ and reused."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels (nbutils.kernels.fused_lora_triton) run in Triton's interpreter on CPU tensors in the tests; set before any
# kernel is defined. Production code on CPU never calls them (nbutils.kernels.fused_lora.ALLOW_CPU_INTERPRETER).
os.environ.setdefault("TRITON_INTERPRET", "1")

from nbutils.io import PROJECT_ROOT  # noqa: E402

EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    """The provisioned SmolLM2-135M-Instruct folder (converted once under the project's data/)."""
    from nbutils.models import provision_embedded_model

    return provision_embedded_model(PROJECT_ROOT / "data")


@pytest.fixture
def data_dir_with_model(tmp_path, embedded_model_path) -> Path:
    """An empty data_dir whose models/base/ already holds the embedded model (a link, not a copy)."""
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / embedded_model_path.name).symlink_to(embedded_model_path, target_is_directory=True)
    return tmp_path
