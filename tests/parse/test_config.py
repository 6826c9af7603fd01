"""nbutils.parse.config: an unknown loader and a bad overlap are refused; the command line prints the resolved
profile and runs nothing."""
from __future__ import annotations

import json

import pytest

from nbutils.parse import ParseConfig


# ---------------------------------------------------------------- the stage on PDFs
def test_config_rejects_unknown_loader_and_bad_overlap(tmp_path):
    with pytest.raises(ValueError, match="loader"):
        ParseConfig.from_params(data_dir=str(tmp_path), loader="ocr")
    with pytest.raises(ValueError, match="chunk_overlap"):
        ParseConfig.from_params(data_dir=str(tmp_path), chunk_tokens=10, chunk_overlap=10)


# ---------------------------------------------------------------- hostile folders
def test_print_config_shows_the_resolved_profile(tmp_path):
    import subprocess
    import sys

    from nbutils.io import PROJECT_ROOT

    out = subprocess.run([sys.executable, "-m", "nbutils.parse", "--profile", "full", "--workers", "3",
                          "--data_dir", str(tmp_path), "--print-config"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout
    printed = json.loads(out)
    assert printed["workers"] == 3 and printed["timeout_s"] == 120.0 and printed["max_memory_mb"] == 4096
    assert printed["pages_path"] == str(tmp_path / "pages.jsonl")
    assert ParseConfig.from_params(profile="demo").timeout_s == 30.0
    assert not (tmp_path / "pages.jsonl").exists()          # printing runs nothing
