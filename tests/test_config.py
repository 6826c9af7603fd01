from dataclasses import dataclass
from typing import ClassVar

import pytest

from nbutils.config import StageConfig


@dataclass
class ToyConfig(StageConfig):
    PROFILE_DEFAULTS: ClassVar[dict] = {"full": {"max_steps": 1000, "load_in_4bit": True}}
    PATH_FIELDS: ClassVar[dict] = {"pages_path": "pages"}
    max_steps: int = 30
    load_in_4bit: bool = False
    lr: float = 2e-4
    pages_path: str | None = None


def test_library_default_when_profile_says_nothing():
    cfg = ToyConfig.from_params(profile="demo")
    assert (cfg.max_steps, cfg.load_in_4bit, cfg.lr) == (30, False, 2e-4)


def test_profile_default_beats_library_default():
    cfg = ToyConfig.from_params(profile="full")
    assert cfg.max_steps == 1000 and cfg.load_in_4bit is True


def test_injected_parameter_beats_profile_and_none_means_default():
    cfg = ToyConfig.from_params(profile="full", max_steps=5, load_in_4bit=None)
    assert cfg.max_steps == 5 and cfg.load_in_4bit is True


def test_path_fields_default_under_data_dir_and_can_be_overridden(tmp_path):
    cfg = ToyConfig.from_params(data_dir=str(tmp_path))
    assert cfg.pages_path == str(tmp_path / "pages.jsonl")
    cfg = ToyConfig.from_params(data_dir=str(tmp_path), pages_path="/elsewhere/p.jsonl")
    assert cfg.pages_path == "/elsewhere/p.jsonl"


def test_unknown_parameter_and_profile_are_clear_errors():
    with pytest.raises(TypeError, match="max_stepz"):
        ToyConfig.from_params(max_stepz=3)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        ToyConfig.from_params(profile="fast")


def test_defaults_table_matches_what_from_params_builds():
    table = ToyConfig.defaults("full")
    cfg = ToyConfig.from_params(profile="full")
    assert table["max_steps"] == cfg.max_steps and table["lr"] == cfg.lr
