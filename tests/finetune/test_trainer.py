"""nbutils/finetune/trainer.py: the sync-free SFTTrainer logs what TRL's own SFTTrainer logs, trains the same, and stops
reading the GPU on every micro-batch."""
from __future__ import annotations

import math

import pytest
import torch
from trl import SFTTrainer

from nbutils.finetune import data, runtime
from nbutils.finetune import train as tr
from nbutils.finetune.trainer import SyncFreeSFTTrainer
from nbutils.models import load_tokenizer
from tests.support.finetune import tiny_cfg, write_original_json

LOGGED = ("loss", "entropy", "mean_token_accuracy", "num_tokens", "num_input_tokens_seen", "grad_norm")


def train_logs(data_dir, stock: bool, **kw) -> tuple[list[dict], SFTTrainer]:
    cfg = tiny_cfg(data_dir, max_steps=3, gradient_accumulation_steps=2, logging_steps=2, **kw)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    data.choose_pad_token(tok)
    train, _, _ = data.load_training_data(cfg, tok, verbose=False)
    torch.manual_seed(0)
    model = tr.load_model_for_training(cfg, rt)
    trainer = tr.build_trainer(cfg, rt, model, tok, train, None)
    if stock:  # TRL's and the Trainer's own methods on the same object
        for name in SyncFreeSFTTrainer.DEFERRING_METHODS:
            setattr(trainer, name, getattr(SFTTrainer, name).__get__(trainer))
    trainer.train()
    return [e for e in trainer.state.log_history if "loss" in e], trainer


@pytest.mark.parametrize("packing", [False, True])
def test_logs_match_trl_sft_trainer(data_dir_with_model, packing):
    write_original_json(data_dir_with_model)
    ours, trainer = train_logs(data_dir_with_model, stock=False, packing=packing)
    assert isinstance(trainer, SyncFreeSFTTrainer)
    stock, _ = train_logs(data_dir_with_model, stock=True, packing=packing)
    assert len(ours) == len(stock) == 2          # step 1 (logging_first_step) and step 2 (logging_steps=2)
    for a, b in zip(ours, stock):
        for key in LOGGED:
            assert key in a and key in b, key
            assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-6), (key, a[key], b[key])
    assert ours[-1]["num_input_tokens_seen"] > ours[0]["num_input_tokens_seen"] > 0
    assert 0.0 < ours[-1]["mean_token_accuracy"] < 1.0 and ours[-1]["entropy"] > 0


def test_no_read_back_between_logs(data_dir_with_model, monkeypatch):
    """Between two logging steps nothing is turned into a Python number: the counters wait for the log."""
    write_original_json(data_dir_with_model)
    cfg = tiny_cfg(data_dir_with_model, max_steps=2, gradient_accumulation_steps=2, logging_steps=10)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    data.choose_pad_token(tok)
    train, _, _ = data.load_training_data(cfg, tok, verbose=False)
    trainer = tr.build_trainer(cfg, rt, tr.load_model_for_training(cfg, rt), tok, train, None)
    seen = []
    real_log = SyncFreeSFTTrainer.log

    def log(self, logs, start_time=None):
        seen.append((len(self._pending_metrics), len(self._pending_input_tokens), self.state.num_input_tokens_seen))
        return real_log(self, logs, start_time)

    monkeypatch.setattr(SyncFreeSFTTrainer, "log", log)
    trainer.train()
    # first log (logging_first_step, after 1 step = 2 micro-batches), then the end-of-training log (1 more step)
    assert seen[0][:2] == (2, 2) and seen[0][2] == 0
    assert trainer.state.num_input_tokens_seen > 0 and not trainer._pending_metrics
