"""The Ollama Modelfile speaks the training template: its TEMPLATE + SYSTEM render exactly the prompt 04 trained
on (Alpaca, or the model's ChatML with its default system prompt), and its stops are the end markers."""
from __future__ import annotations

import pytest

from nbutils.export.chat import render_ollama, runtime_template
from nbutils.export.ollama import modelfile_text, run_commands
from nbutils.templates import alpaca_prompt, build_prompt


@pytest.fixture(scope="module")
def smol_tok(embedded_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_path))


def test_alpaca_modelfile_renders_the_training_prompt_and_stops_at_the_next_section(smol_tok):
    rt = runtime_template(smol_tok, "alpaca")
    q = "Summarise the method of the paper in two sentences."
    assert render_ollama(rt.ollama_template, q, rt.system) == alpaca_prompt(q)
    assert {"<|im_end|>", "### Instruction:"} <= set(rt.stops)
    text = modelfile_text("m-q8_0.gguf", rt)
    assert "FROM ./m-q8_0.gguf" in text and 'PARAMETER stop "### Instruction:"' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text


def test_chat_modelfile_renders_smollm2s_chatml_with_its_default_system_prompt(smol_tok):
    rt = runtime_template(smol_tok, "chat")
    assert rt.family == "chatml" and rt.ollama_template is not None
    assert "SmolLM" in rt.system
    q = "What dataset does the paper use?"
    assert render_ollama(rt.ollama_template, q, rt.system) == build_prompt(q, "", "chat", smol_tok)
    assert "<|im_end|>" in rt.stops


def test_an_unknown_chat_template_gets_no_template_line(smol_tok):
    tok = smol_tok.__class__.from_pretrained(smol_tok.name_or_path)
    tok.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    rt = runtime_template(tok, "chat")
    assert rt.ollama_template is None
    assert "TEMPLATE" not in modelfile_text("x.gguf", rt).replace("No TEMPLATE", "")


def test_commands_name_the_files_and_the_k_quant_tool(tmp_path):
    (tmp_path / "Modelfile").write_text("FROM ./m-q8_0.gguf\n")
    cmds = run_commands(tmp_path, "m", {"f16": str(tmp_path / "m-f16.gguf"), "q8_0": str(tmp_path / "m-q8_0.gguf")},
                        "it's a test")
    assert cmds[0] == f"cd {tmp_path} && ollama create m -f Modelfile"
    assert cmds[1] == "ollama run m 'it'\\''s a test'"
    assert any(c.startswith(f"llama-cli -m {tmp_path}/m-q8_0.gguf --jinja") for c in cmds)
    assert any(c.startswith(f"llama-quantize {tmp_path}/m-f16.gguf {tmp_path}/m-Q4_K_M.gguf Q4_K_M") for c in cmds)
