"""GGUF files from merged/: Q8_0 bit-identical to gguf-py's reference quantiser; read back by transformers' GGUF
loader they give the merged model's logits (f16) and its greedy tokens; tokenizer and chat template inside;
Llama (Q/K permuted, tied or not) and Qwen2 (biases); a killed write leaves no .gguf."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nbutils.export.gguf import quantize_q8_0, write_gguf
from nbutils.export.inputs import gather_inputs
from nbutils.export.merge import write_merged

from .conftest import export_config, make_adapter, save_tiny

TEXT = "Attention is all you need: 12 layers, 8 heads.\n### Response:\n<|im_end|>"


def test_q8_0_blocks_are_bit_identical_to_gguf_py():
    import gguf

    g = torch.Generator().manual_seed(0)
    t = torch.randn(48, 256, generator=g) * 3
    t[0] = 0                                     # an all-zero block: scale 0, no division by zero
    t[1, :32] = torch.arange(32) / 127 * 5       # values exactly half-way between steps
    ref = gguf.quants.quantize(t.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(quantize_q8_0(t), ref)
    assert np.array_equal(quantize_q8_0(t.to(torch.bfloat16)),
                          gguf.quants.quantize(t.to(torch.bfloat16).float().numpy(), gguf.GGMLQuantizationType.Q8_0))


def export_tiny(tmp_path, base, qtypes, template="alpaca"):
    make_adapter(base, tmp_path / "models" / "adapter", template=template)
    inputs = gather_inputs(export_config(tmp_path))
    merged = tmp_path / "merged"
    write_merged(inputs, merged, "bfloat16", "k")
    files = {q: write_gguf(merged, tmp_path / f"m-{q}.gguf", q, "m")["path"] for q in qtypes}
    return merged, files


def logits_of(folder, ids, gguf_file=None):
    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("qwen2", False)])
def test_gguf_read_back_by_transformers_gives_the_merged_models_logits(tmp_path, embedded_model_path, arch, tie):
    from pathlib import Path

    from transformers import AutoTokenizer

    base = save_tiny(tmp_path / "base" / f"tiny-{arch}", embedded_model_path, arch=arch, tie=tie)
    merged, files = export_tiny(tmp_path, base, ["f16", "q8_0"])
    tok = AutoTokenizer.from_pretrained(str(merged))
    ids = tok(TEXT)["input_ids"]
    ref = logits_of(merged, ids)
    f16 = Path(files["f16"])
    got = logits_of(f16.parent, ids, f16.name)
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3)          # bf16 weights are exact in f16
    q8 = Path(files["q8_0"])
    got8 = logits_of(q8.parent, ids, q8.name)
    agree = (got8.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.9 and not torch.allclose(got8, ref, atol=1e-4)  # quantised: close, not equal


def test_tokenizer_and_chat_template_travel_inside_the_gguf(tmp_path, tiny_base):
    import gguf
    from transformers import AutoTokenizer

    merged, files = export_tiny(tmp_path, tiny_base, ["f16"])
    reader = gguf.GGUFReader(files["f16"])
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert "### Instruction:" in fields["tokenizer.chat_template"].contents()
    assert len(fields["tokenizer.ggml.tokens"].data) == 49152
    hf = AutoTokenizer.from_pretrained(str(merged))
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m-f16.gguf")
    assert back(TEXT)["input_ids"] == hf(TEXT)["input_ids"]
    msgs = [{"role": "user", "content": "Why?"}]
    assert back.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert back.eos_token == hf.eos_token


def test_a_killed_gguf_write_leaves_no_gguf(tmp_path, tiny_base, monkeypatch):
    import gguf

    merged, _ = export_tiny(tmp_path, tiny_base, [])
    calls = {"n": 0}
    real = gguf.GGUFWriter.write_tensor_data

    def dies_half_way(self, tensor, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, tensor, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_gguf(merged, tmp_path / "m-q8_0.gguf", "q8_0", "m")
    assert list(tmp_path.glob("*.gguf*")) == []
