"""nbutils.evaluate.model: the adapter must fit the named base; one trained on another base, or whose shapes
do not fit, is refused with a message naming both."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils import evaluate as ev


# ---------------------------------------------------------------- the adapter must fit the named base
def tiny_llama(folder: Path, hidden: int) -> Path:
    """A one-layer random Llama saved as a Hugging Face folder (a stand-in base model, no tokenizer needed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_adapter(base_dir: Path, out: Path, recorded_base: str | None = None) -> Path:
    """A LoRA adapter trained (= initialised) on `base_dir`, with 04's train_log.json naming its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    name = recorded_base or str(base_dir)
    (out / "train_log.json").write_text(json.dumps({"base_model": name, "base_model_path": str(base_dir),
                                                    "config": {"template": "alpaca"}}))
    return out


def test_an_adapter_trained_on_another_base_is_refused_naming_both(tmp_path):
    trained = tiny_llama(tmp_path / "org" / "tiny-base", 32)
    other = tiny_llama(tmp_path / "other" / "tiny-instruct", 32)   # same shapes: PEFT alone would load it
    adapter = tiny_adapter(trained, tmp_path / "adapter")
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path), base_model=str(other),
                                    adapter_dir=str(adapter))
    with pytest.raises(ev.AdapterBaseMismatch, match="was trained on") as e:
        ev.load_model_with_adapter(cfg, verbose=False)
    assert str(trained) in str(e.value) and str(other) in str(e.value)
    # the same base under another name (a hub id vs its local copy, a moved data_dir) is accepted
    cfg.base_model = str(trained)
    model, _ = load_without_tokenizer(cfg)
    assert model.active_adapter == "default"


def test_an_adapter_whose_shapes_do_not_fit_gets_a_clear_message_not_a_size_mismatch_dump(tmp_path):
    trained = tiny_llama(tmp_path / "a" / "tiny", 32)
    wider = tiny_llama(tmp_path / "b" / "tiny", 48)          # same folder name, other shapes
    adapter = tiny_adapter(trained, tmp_path / "adapter")
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path), base_model=str(wider),
                                    adapter_dir=str(adapter))
    with pytest.raises(ev.AdapterBaseMismatch, match="does not fit base_model") as e:
        load_without_tokenizer(cfg)
    msg = str(e.value)
    assert str(wider) in msg and str(trained) in msg and msg.count("size mismatch") <= 1


def load_without_tokenizer(cfg):
    """load_model_with_adapter for the tiny bases, which ship no tokenizer (the check happens before it)."""
    from unittest import mock

    with mock.patch("nbutils.evaluate.model.load_tokenizer_for_eval", return_value=None):
        return ev.load_model_with_adapter(cfg, verbose=False)
