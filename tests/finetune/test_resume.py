"""nbutils.finetune.resume and the stage's front doors: a mistyped value fails before anything
is read or written, whichever way it comes in (config, command line, runner); checkpoints of another configuration
are moved aside with a message naming the folder and the difference, never deleted."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nbutils.config import ConfigValueError
from nbutils.finetune import FinetuneConfig, resume
from nbutils.finetune.__main__ import main
from nbutils.io import read_json

TYPOS = [("learning_rate", "2e-3x"), ("max_steps", "abc")]


def fake_checkpoint(folder: Path, step: int) -> None:
    """A checkpoint folder that loads (a real, tiny safetensors and trainer_state.json)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def make_checkpoints(data_dir: Path, **params) -> Path:
    """A previous demo run's checkpoint folder (checkpoint-2 and its run_config.json), made with `params`."""
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir), **params)
    ckpts = Path(cfg.checkpoint_dir)
    fake_checkpoint(ckpts / "checkpoint-2", 2)
    record = {"fingerprint": "made-before", "config": cfg.to_dict(), "resolved": {"optim": "adamw_torch"},
              "data_sha256": "rows-before"}
    (ckpts / resume.RUN_CONFIG_FILE).write_text(json.dumps(record))
    return ckpts


def snapshot(root: Path) -> dict:
    """Every file under root: its content hash and mtime."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def record_for(cfg: FinetuneConfig, fingerprint: str = "made-now", data: str = "rows-before") -> dict:
    return {"fingerprint": fingerprint, "config": cfg.to_dict(), "resolved": {"optim": "adamw_torch"},
            "data_sha256": data}


# ------------------------------------------------------------------------------------------------ typos
@pytest.mark.parametrize("name,value", TYPOS)
def test_a_mistyped_value_fails_in_the_config(tmp_path, name, value):
    make_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigValueError, match=f"{name}={value!r}"):
        FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path), **{name: value})
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name,value", TYPOS)
def test_a_mistyped_flag_fails_on_the_command_line_before_anything_is_touched(tmp_path, capsys, name, value):
    make_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    assert main(["--data_dir", str(tmp_path), f"--{name}", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}={value!r}: expected") and "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name,value", TYPOS)
def test_a_mistyped_runner_parameter_fails_before_any_stage_runs(tmp_path, monkeypatch, name, value):
    import papermill as pm

    from nbutils.config import parse_literal
    from nbutils.runner import run_pipeline

    make_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: pytest.fail("a stage ran"))
    with pytest.raises(ValueError, match=f"04_finetune: {name}={value!r}"):
        run_pipeline("demo", tmp_path, params={name: parse_literal(value)}, raw={name: value}, only=["04"])
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ changed config
def test_a_changed_config_moves_the_checkpoints_aside_never_deletes_them(tmp_path, capsys):
    ckpts = make_checkpoints(tmp_path, lora_r=16)
    before = snapshot(ckpts)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path), lora_r=8, learning_rate=2e-3)
    record = record_for(cfg)
    plan = resume.plan_resume(cfg, record)
    assert plan.checkpoint is None and plan.stale.endswith("checkpoint-2")
    assert "lora_r 16 -> 8" in plan.why and "learning_rate 0.001 -> 0.002" in plan.why
    assert snapshot(ckpts) == before  # deciding touches nothing

    aside = resume.start_run(cfg, plan, record)
    assert aside.parent == ckpts.parent and aside.name.startswith("checkpoints.old-")
    assert snapshot(aside) == before  # every file kept, unchanged
    out = capsys.readouterr().out
    assert f"moved to {aside}" in out and "lora_r 16 -> 8" in out and "nothing deleted" in out
    assert resume.last_checkpoint(ckpts) is None and read_json(ckpts / resume.RUN_CONFIG_FILE) == record


def test_resume_false_also_sets_aside_and_each_set_gets_its_own_folder(tmp_path, capsys):
    first = make_checkpoints(tmp_path)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path), resume=False)
    record = record_for(cfg, fingerprint="made-before")  # the same run: only resume=False says start over
    plan = resume.plan_resume(cfg, record)
    assert (plan.checkpoint, plan.why) == (None, "resume=False")
    one = resume.start_run(cfg, plan, record)
    fake_checkpoint(first / "checkpoint-4", 4)
    two = resume.start_run(cfg, resume.plan_resume(cfg, record), record)
    assert one != two and (one / "checkpoint-2").is_dir() and (two / "checkpoint-4").is_dir()
    assert "resume=False" in capsys.readouterr().out


def test_the_same_run_resumes_and_nothing_moves(tmp_path):
    ckpts = make_checkpoints(tmp_path)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path))
    plan = resume.plan_resume(cfg, record_for(cfg, fingerprint="made-before"))
    assert plan.checkpoint.endswith("checkpoint-2") and plan.stale is None
    assert resume.start_run(cfg, plan, record_for(cfg, fingerprint="made-before")) is None
    assert (ckpts / "checkpoint-2" / "adapter_model.safetensors").exists()


def test_resume_true_refuses_another_run_and_says_what_differs(tmp_path):
    make_checkpoints(tmp_path)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="the training data changed.*resume=False"):
        resume.plan_resume(cfg, record_for(cfg, data="rows-now"))
    empty = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path / "fresh"), resume=True)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        resume.plan_resume(empty, record_for(empty))
