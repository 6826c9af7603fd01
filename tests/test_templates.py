import pytest

from nbutils.templates import build_prompt


def test_alpaca_prompt_matches_the_original_sections():
    p = build_prompt("Summarise the method.", "LoRA adds low-rank adapters.")
    assert p.index("### Instruction:\nSummarise the method.") < p.index("### Input:\nLoRA adds") < p.index("### Response:\n")
    assert p.endswith("### Response:\n")
    assert "### Input:" not in build_prompt("What is QLoRA?", "  ")


def test_chat_template_needs_a_tokenizer_and_unknown_template_is_refused():
    with pytest.raises(ValueError, match="alpaca"):
        build_prompt("Q?", template="chat")
    with pytest.raises(ValueError, match="unknown template"):
        build_prompt("Q?", template="vicuna")
