"""merged/: the streaming merge equals PEFT's merge_and_unload; the tokenizer renders the training template; the
generation config stops where training taught the model to stop; a killed merge leaves nothing taken as done."""
from __future__ import annotations

import json

import pytest
import torch

from nbutils.export.chat import ALPACA_JINJA
from nbutils.export.inputs import gather_inputs
from nbutils.export.merge import merged_is_current, write_merged
from nbutils.templates import alpaca_prompt

from .conftest import export_config


@pytest.fixture
def merged(data_dir, tmp_path):
    inputs = gather_inputs(export_config(data_dir))
    info = write_merged(inputs, tmp_path / "merged", "bfloat16", "key-1")
    return inputs, tmp_path / "merged", info


def test_streaming_merge_equals_peft_merge_and_unload(merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    inputs, out, info = merged
    assert info["method"] == "streaming" and info["merged_weights"] == 2 * 7
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(inputs.base_path)),
                                    str(inputs.adapter_dir)).merge_and_unload().state_dict()
    got = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(str(inputs.base_path)).state_dict()
    for name, w in ref.items():
        assert torch.allclose(got[name].float(), w.float(), atol=1e-2, rtol=1e-2), name
    changed = [n for n in ref if not torch.equal(ref[n], base[n])]
    assert len(changed) == 14   # the LoRA really moved every adapted weight


def test_merged_folder_carries_the_training_template_and_stop_ids(merged):
    from transformers import AutoTokenizer

    _, out, _ = merged
    tok = AutoTokenizer.from_pretrained(str(out))
    msgs = [{"role": "user", "content": "What does Table 2 show?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == alpaca_prompt(
        "What does Table 2 show?")
    assert tok.chat_template == ALPACA_JINJA
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    conf = json.loads((out / "config.json").read_text())
    assert conf["dtype"] == "bfloat16" and "quantization_config" not in conf
    assert merged_is_current(out, "key-1") and not merged_is_current(out, "key-2")


def test_a_chat_trained_adapter_keeps_the_models_template_and_stops_at_end_of_turn(tmp_path, tiny_base):
    from transformers import AutoTokenizer

    from .conftest import make_adapter

    make_adapter(tiny_base, tmp_path / "models" / "adapter", template="chat")
    inputs = gather_inputs(export_config(tmp_path))
    write_merged(inputs, tmp_path / "merged", "float16", "k")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    assert "<|im_start|>" in tok.chat_template
    gen = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "float16"


def test_a_killed_merge_leaves_no_folder_a_rerun_takes_as_done(data_dir, tmp_path, monkeypatch):
    import nbutils.export.merge as m

    inputs = gather_inputs(export_config(data_dir))

    def boom(*a, **k):
        raise KeyboardInterrupt  # the user stops the cell half-way through the weights

    monkeypatch.setattr(m, "load_export_tokenizer", boom)
    with pytest.raises(KeyboardInterrupt):
        write_merged(inputs, tmp_path / "merged", "bfloat16", "key")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()
    assert not merged_is_current(tmp_path / "merged", "key")


def test_a_4bit_base_checkpoint_is_dequantised_to_bf16_and_never_requantised(tmp_path, tiny_base):
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = tmp_path / "q" / "tiny-llama"          # same folder name as the base the adapter records
    AutoModelForCausalLM.from_pretrained(str(tiny_base), device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)).save_pretrained(str(q))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_base / f).exists():
            shutil.copy(tiny_base / f, q / f)
    from .conftest import make_adapter

    make_adapter(tiny_base, tmp_path / "models" / "adapter")
    inputs = gather_inputs(export_config(tmp_path, base_model=str(q)))
    assert inputs.base_4bit_checkpoint and any("dequantised to bfloat16" in n for n in inputs.notes)
    info = write_merged(inputs, tmp_path / "merged", "bfloat16", "k")
    assert info["method"] == "peft, 4-bit base dequantised to bfloat16"
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    got = load_file(str(tmp_path / "merged" / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert got.dtype == torch.bfloat16 and got.shape == (64, 64)
    deq = AutoModelForCausalLM.from_pretrained(str(q), device_map="cpu").dequantize()
    w = deq.state_dict()["model.layers.0.self_attn.q_proj.weight"].float()
    ad = load_file(str(tmp_path / "models" / "adapter" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    want = w + 2.0 * (ad[key.format("B")].float() @ ad[key.format("A")].float())   # alpha/r = 8/4
    assert torch.allclose(got.float(), want, atol=2e-2, rtol=2e-2)
    orig = AutoModelForCausalLM.from_pretrained(str(tiny_base)).state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.allclose(got.float(), orig + (want - w), atol=2e-2)   # the nf4 weights, not the original ones
