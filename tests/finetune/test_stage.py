"""04_finetune end to end (nbutils.finetune.stage): CLI flags round-trip into the launch command, the command
line types its values; with the embedded model the loss falls, the adapter loads anywhere, and a killed run
resumes at the right step with the same data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from nbutils.config import config_from_argv
from nbutils.finetune import FinetuneConfig, resume, stage
from nbutils.finetune import train as tr
from nbutils.finetune.__main__ import main
from nbutils.io import PROJECT_ROOT
from tests.support.finetune import ORIGINAL_RECIPE, tiny_cfg


# ------------------------------------------------------------------------------------------------ fast
def test_cli_flags_round_trip(tmp_path):
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), max_steps=10, lora_r=8,
                                     lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-4,
                                     **ORIGINAL_RECIPE)
    again, print_only = config_from_argv(FinetuneConfig, stage.cli_args(cfg), "test")
    assert again.to_dict() == cfg.to_dict() and not print_only
    cmd = " ".join(stage.launch_command(cfg))
    assert "accelerate.commands.launch --multi_gpu" in cmd and "-m nbutils.finetune" in cmd


def test_command_line_types_its_values_and_prints_the_config(tmp_path, capsys):
    assert main(["--profile", "full", "--data_dir", str(tmp_path), "--packing", "True", "--lora-r", "8",
                 "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["packing"], printed["lora_r"], printed["profile"]) == (True, 8, "full")
    assert printed["learning_rate"] == 2e-4
    assert printed["checkpoint_dir"] == str(tmp_path / "models" / "checkpoints") and not (tmp_path / "models").exists()
    out = subprocess.run([sys.executable, "-m", "nbutils.finetune", "--print-config", "--profile", "full"],
                         capture_output=True, text=True, check=True, cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}).stdout
    assert json.loads(out) == FinetuneConfig.from_params(profile="full").to_dict()


# ------------------------------------------------------------------------------------------------ with the model
class KillAt(TrainerCallback):
    """Simulates the process dying right after `step` (before any later checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {self.step}")


class RecordBatches(TrainerCallback):
    """Records (global_step, first tokens of each row) for every training forward pass."""

    def __init__(self):
        self.batches, self._step = [], 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, args_, kwargs_):
            if module.training and kwargs_.get("input_ids") is not None:
                self.batches.append((self._step, [tuple(r[:24].tolist()) for r in kwargs_["input_ids"]]))
        model.register_forward_pre_hook(hook, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = state.global_step + 1


@pytest.mark.slow
def test_loss_falls_and_adapter_loads_anywhere(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, max_steps=8, learning_rate=2e-3, eval_steps=8, merge=True)
    result = tr.train(cfg, verbose=False)
    s = result.stats
    assert s["eval_loss_end"] < 0.8 * s["eval_loss_start"], s
    assert s["last_loss"] < s["first_loss"]
    out = Path(cfg.output_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "train_log.json",
                 "loss.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "train_log.json").read_text())
    entry = next(e for e in saved["log"] if "loss" in e and e["step"] > 1)
    assert {"loss", "learning_rate", "tokens_per_s", "peak_rss_gib"} <= set(entry)
    assert saved["truncation"][0]["rows"] == 24 and saved["summary"]["truncated_rows"] >= 0
    assert result.loss_plot == str(out / "loss.png") and result.rows() == saved["log"]
    assert "Fine-tuned SmolLM2-135M-Instruct for 8 steps" in result.summary()
    assert "train: 24 rows" in result.truncation_text() and list(result.table().columns)[:2] == ["step", "epoch"]
    # the base moved: the adapter still loads onto it and changes its output
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    moved = tmp_path / "elsewhere"
    moved.symlink_to(data_dir / "models" / "base" / "SmolLM2-135M-Instruct", target_is_directory=True)
    base = AutoModelForCausalLM.from_pretrained(moved)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(x).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(x).logits
    assert not torch.allclose(before, after)
    assert (Path(cfg.merged_dir) / "config.json").exists()


@pytest.mark.slow
def test_resume_after_kill_continues_at_the_right_step_with_the_same_data(data_dir, tmp_path, capsys):
    reference = RecordBatches()
    ref_cfg = tiny_cfg(data_dir, max_steps=4, save_steps=2, checkpoint_dir=str(tmp_path / "ref_ckpt"),
                       output_dir=str(tmp_path / "ref_adapter"), max_eval_samples=2)
    tr.train(ref_cfg, extra_callbacks=[reference], verbose=False)

    cfg = tiny_cfg(data_dir, max_steps=4, save_steps=2, max_eval_samples=2)
    killed = RecordBatches()
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, extra_callbacks=[killed, KillAt(3)], verbose=False)
    assert resume.last_checkpoint(cfg.checkpoint_dir).endswith("checkpoint-2")
    assert not (Path(cfg.output_dir) / "adapter_config.json").exists()

    resumed = RecordBatches()
    log = tr.train(cfg, extra_callbacks=[resumed], verbose=False).log
    assert log["resumed_from"].endswith("checkpoint-2") and log["global_step"] == 4
    assert [s for s, _ in resumed.batches] == [3, 4]
    assert [e["step"] for e in log["log"] if "loss" in e] == [1, 2, 3, 4]  # the log of steps 1-2 survived the kill
    assert [b for s, b in killed.batches if s <= 2] == [b for s, b in reference.batches if s <= 2]
    assert [b for _, b in resumed.batches] == [b for s, b in reference.batches if s >= 3]
    assert (Path(cfg.output_dir) / "adapter_config.json").exists()

    # a different configuration never resumes someone else's checkpoints, and never deletes them
    capsys.readouterr()
    other = tiny_cfg(data_dir, max_steps=2, save_steps=2, lora_r=8, max_eval_samples=2)
    log = tr.train(other, verbose=False).log
    aside = Path(log["checkpoints_set_aside"])
    assert log["resumed_from"] is None and log["global_step"] == 2
    assert aside.name.startswith("checkpoints.old-") and (aside / "checkpoint-4").is_dir()
    out = capsys.readouterr().out
    assert f"moved to {aside}" in out and "lora_r 4 -> 8" in out
    assert resume.last_checkpoint(cfg.checkpoint_dir).endswith("checkpoint-2")  # the new run's own
