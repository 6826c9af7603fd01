"""The embedded SmolLM2 end to end (slow): exported with an adapter, its f16 GGUF read back by transformers' GGUF
loader answers 4 Alpaca prompts with the merged model's greedy tokens. benchmarks/export_roundtrip.py measures the
same on 32 prompts, and q8_0's agreement."""
from __future__ import annotations

import pytest
import torch

from nbutils import export as ex
from nbutils.templates import alpaca_prompt

from .conftest import make_adapter

pytestmark = pytest.mark.slow


def test_smollm2_f16_gguf_gives_the_merged_models_greedy_tokens(data_dir_with_model, embedded_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_adapter(embedded_model_path, data_dir_with_model / "models" / "adapter", r=8,
                 base_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    adapter = data_dir_with_model / "models" / "adapter"
    with torch.no_grad():   # a trained adapter's scale: the random B above would drown the base model
        from safetensors.torch import load_file, save_file

        w = load_file(str(adapter / "adapter_model.safetensors"))
        save_file({k: v * (0.05 if "lora_B" in k else 1.0) for k, v in w.items()},
                  str(adapter / "adapter_model.safetensors"))
    r = ex.run(ex.ExportConfig.from_params(data_dir=str(data_dir_with_model), gguf_types=["f16"]), verbose=False)
    merged = r.path("merged")
    tok = AutoTokenizer.from_pretrained(merged)
    tok.padding_side = "left"
    prompts = [alpaca_prompt(q) for q in ("What is attention?", "Name two uses of LoRA.",
                                          "Summarise: we train a small model on 7 papers.", "What is 12 + 30?")]
    enc = tok(prompts, return_tensors="pt", padding=True)

    def greedy(model):
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return out[:, enc["input_ids"].shape[1]:]

    ref = greedy(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval())
    from pathlib import Path

    f16 = Path(r.path("gguf f16"))
    got = greedy(AutoModelForCausalLM.from_pretrained(str(f16.parent), gguf_file=f16.name,
                                                      dtype=torch.float32).eval())
    assert torch.equal(got, ref)
    assert "license: apache-2.0" in (data_dir_with_model / "export" / "README.md").read_text()
