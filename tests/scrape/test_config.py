"""nbutils.scrape.config and `python -m nbutils.scrape`: defaults, the demo overrides, typed values."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbutils.config import ConfigValueError
from nbutils.scrape import ScrapeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_field_defaults_are_the_full_recipe_and_demo_only_overrides():
    full, demo = ScrapeConfig(), ScrapeConfig.from_params(profile="demo")
    assert (full.site, full.max_papers, full.delay_s, full.page_size) == ("https://arxiv.org", 50, 3.0, 50)
    assert (demo.site, demo.max_papers, demo.max_request_s) == ("demo", 8, 60.0)
    assert demo.query == full.query == "llm" and demo.date_from == full.date_from == "2024-04-18"


def test_values_are_typed_and_checked():
    cfg = ScrapeConfig.from_params(profile="demo", download="false", max_papers="3", allowed_hosts="a.org,b.org")
    assert cfg.download is False and cfg.max_papers == 3 and cfg.allowed_hosts == ["a.org", "b.org"]
    for bad, match in [({"backend": "curl"}, "backend='curl'"), ({"max_papers": "abc"}, "max_papers='abc'"),
                       ({"date_from": "18.04.2024"}, "date_from='18.04.2024'"), ({"max_request_s": 0}, "max_request_s")]:
        with pytest.raises(ConfigValueError, match=match):
            ScrapeConfig.from_params(profile="demo", **bad)


def test_print_config_prints_the_resolved_configuration(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "nbutils.scrape", "--print-config", "--profile", "full",
                          "--data_dir", str(tmp_path), "--backend", "api", "--max-papers", "5"],
                         capture_output=True, text=True, env=env, check=True).stdout
    cfg = json.loads(out)
    assert cfg["backend"] == "api" and cfg["max_papers"] == 5 and cfg["site"] == "https://arxiv.org"
    assert cfg["papers_path"] == str(tmp_path / "papers.jsonl")
    bad = subprocess.run([sys.executable, "-m", "nbutils.scrape", "--print-config", "--download", "perhaps"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "download='perhaps'" in bad.stderr
