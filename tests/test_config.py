import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from nbutils.config import (
    ConfigValueError,
    StageConfig,
    coerce,
    config_from_argv,
    option,
    parameter_table,
    parse_literal,
    stage_main,
)


@dataclass
class ToyConfig(StageConfig):
    PROFILE_OVERRIDES: ClassVar[dict] = {"demo": {"max_steps": 30, "load_in_4bit": False}}
    PATH_FIELDS: ClassVar[dict] = {"pages_path": "pages"}
    max_steps: int = option(1000, "optimizer steps")
    load_in_4bit: bool = option(True, "QLoRA")
    lr: float = option(2e-4, "learning rate")
    packing: bool | str = option("auto", "auto or a bool", choices=("auto",))
    targets: list = option(["q_proj", "v_proj"], "modules")
    pages_path: str | None = option(None, "None: data_dir/pages.jsonl")


def test_field_default_is_the_full_profile_and_demo_overrides_it():
    full, demo = ToyConfig.from_params(profile="full"), ToyConfig.from_params(profile="demo")
    assert (full.max_steps, full.load_in_4bit) == (1000, True)
    assert (demo.max_steps, demo.load_in_4bit, demo.lr) == (30, False, 2e-4)
    assert ToyConfig().profile == "full" and ToyConfig().max_steps == 1000  # direct construction = full recipe


def test_injected_parameter_beats_profile_and_none_means_default():
    cfg = ToyConfig.from_params(profile="demo", max_steps=5, load_in_4bit=None)
    assert cfg.max_steps == 5 and cfg.load_in_4bit is False


def test_strings_are_parsed_by_the_field_type():
    cfg = ToyConfig.from_params(profile="full", max_steps="7", load_in_4bit="False", lr="1e-3", packing="True",
                                targets="q_proj, k_proj")
    assert (cfg.max_steps, cfg.load_in_4bit, cfg.lr, cfg.packing) == (7, False, 1e-3, True)
    assert cfg.targets == ["q_proj", "k_proj"]
    assert ToyConfig.from_params(profile="full", packing="auto").packing == "auto"
    assert ToyConfig.from_params(profile="full", targets='["o_proj"]').targets == ["o_proj"]


@pytest.mark.parametrize("name,value,msg", [
    ("lr", "2e-3x", "lr='2e-3x': expected float"),
    ("max_steps", "abc", "max_steps='abc': expected int"),
    ("max_steps", 2.5, "expected int"),
    ("load_in_4bit", "maybe", "expected bool"),
    ("packing", "sometimes", "expected one of 'auto'"),
])
def test_a_value_of_the_wrong_type_names_the_parameter(name, value, msg):
    with pytest.raises(ConfigValueError, match=msg.replace("(", r"\(")):
        ToyConfig.from_params(profile="full", **{name: value})


def test_untyped_literals_and_optional_types():
    assert [parse_literal(v) for v in ("3", "0.5", "True", "None", "api", "[1, 2]")] == [3, 0.5, True, None, "api",
                                                                                        [1, 2]]
    assert coerce("x", "None", int | None) is None and coerce("x", "4", int | None) == 4
    assert coerce("q", 2024, str) == "2024"


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
    for profile in ("demo", "full"):
        table, cfg = ToyConfig.defaults(profile), ToyConfig.from_params(profile=profile)
        assert table["max_steps"] == cfg.max_steps and table["lr"] == cfg.lr


def test_parameter_table_shows_both_profiles_and_the_help():
    table = parameter_table(ToyConfig)
    assert "| `max_steps` | `1000` | `30` | optimizer steps |" in table
    assert "| `lr` | `0.0002` | same | learning rate |" in table


def test_command_line_and_print_config(tmp_path, capsys):
    cfg, print_only = config_from_argv(ToyConfig, ["--profile", "full", "--max-steps", "9", "--data_dir",
                                                   str(tmp_path), "--print-config"], "toy")
    assert print_only and cfg.max_steps == 9 and cfg.data_dir == str(tmp_path)
    assert stage_main(ToyConfig, run=lambda c: pytest.fail("must not run"),
                      argv=["--packing", "True", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["packing"] is True and printed["profile"] == "demo" and printed["max_steps"] == 30
    assert stage_main(ToyConfig, run=lambda c: None, argv=["--lr", "fast"]) == 2
    assert "lr='fast': expected float" in capsys.readouterr().err


def stage_configs():
    import importlib

    from nbutils.runner import STAGE_CONFIGS

    return [getattr(importlib.import_module(mod), name) for mod, name in STAGE_CONFIGS.values()]


@pytest.mark.parametrize("cls", stage_configs(), ids=lambda c: c.__name__)
def test_every_profile_is_data_that_resolves(cls, tmp_path):
    from nbutils.config import PROFILES

    assert set(cls.PROFILE_OVERRIDES) == set(PROFILES) - {"full"}   # full = the field defaults
    for profile in PROFILES:
        cfg = cls.from_params(profile=profile, data_dir=str(tmp_path))
        for k, v in cls.overrides(profile).items():
            assert getattr(cfg, k) == v, (profile, k)


def test_original_recipe_lives_in_one_place():
    from nbutils.finetune import FinetuneConfig

    original = FinetuneConfig.overrides("original")
    assert original["memory_mode"] == "lean" and original["fuse_lora"] is False and original["packing"] is False
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--profile original" in readme and "-p fuse_lora False" not in readme
