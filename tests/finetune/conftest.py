"""Fixtures shared by stage 04's tests: a data_dir holding the embedded model and an original-format JSON."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.finetune import write_original_json


@pytest.fixture
def data_dir(data_dir_with_model) -> Path:
    write_original_json(data_dir_with_model)
    return data_dir_with_model
