"""nbutils.generate.config: the profiles pick the backends, bad parameters are named, the command line prints
the resolved profile."""
import json
import subprocess
import sys

import pytest

from nbutils.generate import GenerateConfig
from nbutils.io import PROJECT_ROOT


def test_profiles_pick_backends():
    assert GenerateConfig.defaults("demo")["backend"] == "local"
    full = GenerateConfig.defaults("full")
    assert full["backend"] == "groq" and full["prompt"] == "original" and full["max_pages"] == 0


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="backend='grok': expected one of 'groq', 'openai', 'local'"):
        GenerateConfig.from_params(profile="full", data_dir=str(tmp_path), backend="grok")
    with pytest.raises(ValueError, match="test_size"):
        GenerateConfig.from_params(profile="full", data_dir=str(tmp_path), test_size=1.5)


# ---------------------------------------------------------------- faults that must not lose or leak work
def test_print_config_shows_the_resolved_profile(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nbutils.generate", "--profile", "demo", "--max-wait-s", "5",
                          "--json_mode", "false", "--data_dir", str(tmp_path), "--print-config"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, check=True).stdout
    printed = json.loads(out)
    assert printed["backend"] == "local" and printed["max_pages"] == 56 and printed["max_wait_s"] == 5.0
    assert printed["json_mode"] is False and printed["triples_path"] == str(tmp_path / "triples.jsonl")
    bad = subprocess.run([sys.executable, "-m", "nbutils.generate", "--timeout_s", "soon", "--print-config"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "timeout_s='soon': expected float" in bad.stderr
