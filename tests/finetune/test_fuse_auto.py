"""fuse_lora="auto": nbutils.kernels' fused LoRA layers only where they are faster than PEFT's own, decided by the
model's width (FUSE_LORA_MIN_HIDDEN, measured in benchmarks/RESULTS.md, issue 25)."""
from __future__ import annotations

import json

import pytest

from nbutils.finetune import FinetuneConfig, data, runtime
from nbutils.finetune import train as tr
from nbutils.finetune.config import FUSE_LORA_MIN_HIDDEN
from nbutils.kernels.fused_lora import fused_layer_count
from nbutils.models import load_tokenizer


@pytest.mark.parametrize("profile", ["demo", "full"])
def test_auto_is_the_default(profile):
    assert FinetuneConfig.from_params(profile=profile).fuse_lora == "auto"


def test_auto_decides_by_width():
    on, why = runtime.resolve_fuse_lora("auto", 4096)
    assert on and f"hidden_size 4096 >= {FUSE_LORA_MIN_HIDDEN}" in why
    off, why = runtime.resolve_fuse_lora("auto", 576)
    assert not off and f"hidden_size 576 < {FUSE_LORA_MIN_HIDDEN}" in why and "PEFT" in why
    assert runtime.resolve_fuse_lora("auto", None)[0] is True          # unknown width: the fused path, as before


@pytest.mark.parametrize("value", [True, False])
def test_a_set_value_wins_over_the_width(value):
    for width in (576, 4096):
        got, why = runtime.resolve_fuse_lora(value, width)
        assert got is value and why == f"fuse_lora={value} (set)"


def test_the_runtime_says_auto_until_the_model_is_loaded(tmp_path):
    rt = runtime.resolve_runtime(FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path)), device="cpu")
    assert rt.fuse_lora == "auto" and "decided by the model width" in rt.describe()


def _rows(data_dir) -> None:
    rows = [{"Instruction": f"Summarise result {i}.", "Input": f"Abstract {i}: we study topic {i}.",
             "Output": f"Result {i} improves the baseline by {i} points."} for i in range(12)]
    (data_dir / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))


@pytest.mark.parametrize("threshold, fused", [(FUSE_LORA_MIN_HIDDEN, False), (64, True)])
def test_build_trainer_fuses_by_the_loaded_models_width(data_dir_with_model, monkeypatch, threshold, fused):
    """The embedded SmolLM2-135M (hidden 576) keeps PEFT's layers under the default threshold; a threshold under its
    width gives every adapted projection the fused forward. The decision and its reason land in the runtime."""
    monkeypatch.setattr(runtime, "FUSE_LORA_MIN_HIDDEN", threshold)
    _rows(data_dir_with_model)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir_with_model), lora_r=4, lora_alpha=8,
                                     max_length=64, max_steps=1, lora_dropout=0.0)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    data.choose_pad_token(tok)
    train, _, _ = data.load_training_data(cfg, tok, verbose=False)
    trainer = tr.build_trainer(cfg, rt, tr.load_model_for_training(cfg, rt), tok, train, None)
    n_layers = trainer.model.config.num_hidden_layers * len(cfg.lora_target_modules)
    assert fused_layer_count(trainer.model) == (n_layers if fused else 0)
    assert rt.fuse_lora is fused and f"hidden_size 576 {'>=' if fused else '<'} {threshold}" in rt.fuse_reason
