"""Issue 27 item 4: a checkpoint cut short while saving never blocks a rerun: resume takes the newest checkpoint
that loads and sets the broken one aside with the reason; a full disk says so (nbutils/finetune/)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from nbutils.finetune import FinetuneConfig
from nbutils.finetune.resume import RUN_CONFIG_FILE, plan_resume, start_run


def make_checkpoint(folder, step: int) -> None:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.zeros(64, 64)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {0: torch.zeros(4096)}}, folder / "optimizer.pt")
    torch.save({"lr": 1.0}, folder / "scheduler.pt")


def cut(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def cfg(tmp_path):
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path))
    ckpts = tmp_path / "models" / "checkpoints"
    make_checkpoint(ckpts / "checkpoint-8", 8)
    make_checkpoint(ckpts / "checkpoint-16", 16)
    (ckpts / RUN_CONFIG_FILE).write_text(json.dumps({"fingerprint": "same"}))
    return cfg


@pytest.mark.parametrize("broken_file", ["optimizer.pt", "adapter_model.safetensors", "trainer_state.json"])
def test_resume_passes_over_a_checkpoint_cut_short_and_sets_it_aside(cfg, broken_file, capsys):
    ckpts = cfg.paths.checkpoints
    cut(ckpts / "checkpoint-16" / broken_file)
    plan = plan_resume(cfg, {"fingerprint": "same"})
    assert plan.checkpoint == str(ckpts / "checkpoint-8")
    start_run(cfg, plan, {"fingerprint": "same"})
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-8"]
    aside = list(ckpts.parent.glob("checkpoints.broken-*/checkpoint-16"))
    assert len(aside) == 1 and broken_file in (aside[0] / "REASON.txt").read_text()
    assert "does not load" in capsys.readouterr().out


def test_intact_checkpoints_resume_the_newest(cfg):
    assert plan_resume(cfg, {"fingerprint": "same"}).checkpoint == str(cfg.paths.checkpoints / "checkpoint-16")


def test_a_full_disk_while_saving_says_no_space_left_and_how_much(cfg):
    from nbutils.finetune.train import DiskFull, run_training

    class FullDiskTrainer:
        def train(self, resume_from_checkpoint=None):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 19076608 vs 19076496")

    with pytest.raises(DiskFull) as e:
        run_training(FullDiskTrainer(), cfg, None, None)
    assert f"no space left on {cfg.checkpoint_dir}: need ~" in str(e.value) and " GB" in str(e.value)
    assert "unexpected pos" not in str(e.value)
