"""Reply parsing (every shape real LLM replies take) and the quality filters."""
import json

import pytest

from nbutils.triples import QualityFilter, clean_field, parse_json_reply, parse_reply

PLAIN = """Triple 1:
Instruction: Summarise the main contribution of the paper.
Input: The paper proposes LoRA for efficient fine-tuning.
Output: It introduces low-rank adapters that cut trainable parameters.

Triple 2:
Instruction: What does QLoRA quantize?
Input: None
Output: The frozen base model, to 4-bit NormalFloat.

Triple 3:
Instruction: Name the optimizer used in training.
Input:
Output: AdamW with a cosine schedule."""


def test_plain_original_format_gives_three_clean_triples():
    r = parse_reply(PLAIN)
    assert r.reason is None
    assert [t["instruction"] for t in r.triples] == [
        "Summarise the main contribution of the paper.", "What does QLoRA quantize?",
        "Name the optimizer used in training."]
    assert r.triples[1]["input"] == "" and r.triples[2]["input"] == ""   # "None" and empty -> ""
    assert r.triples[2]["output"] == "AdamW with a cosine schedule."


def test_bold_headers_bold_labels_and_blank_lines_between_fields():
    reply = """Here are three triples based on the text:

**Triple 1:**

**Instruction:** Explain grouped-query attention.

**Input:** The model uses 8 key-value heads.

**Output:** Several query heads share one key-value head, shrinking the KV cache.

**Triple 2**:
**Instruction**: How long did training take?
**Input**: 1024 GPUs
**Output**: 21 days.
"""
    r = parse_reply(reply)
    assert len(r.triples) == 2
    t = r.triples[0]
    assert t == {"instruction": "Explain grouped-query attention.", "input": "The model uses 8 key-value heads.",
                 "output": "Several query heads share one key-value head, shrinking the KV cache."}
    assert r.triples[1]["output"] == "21 days."
    assert not any("*" in v for t in r.triples for v in t.values())


def test_markdown_heading_headers_and_five_triples():
    reply = "\n\n".join(f"### Triple {i}\nInstruction: Question number {i} about the method?\nInput: x{i}\n"
                        f"Output: Answer {i}." for i in range(1, 6))
    r = parse_reply(reply)
    assert [t["output"] for t in r.triples] == [f"Answer {i}." for i in range(1, 6)]


def test_two_triples_without_headers_split_at_each_instruction():
    reply = ("Instruction: Define RAG.\nInput: \nOutput: Retrieval-augmented generation.\n\n"
             "Instruction: What index does RAG use?\nInput: \nOutput: A dense vector index.")
    r = parse_reply(reply)
    assert [t["instruction"] for t in r.triples] == ["Define RAG.", "What index does RAG use?"]


def test_multiline_code_json_and_lists_are_kept_whole():
    reply = '''Triple 1:
Instruction: Write a function that merges a LoRA update into a weight matrix.
Input: W is d x k, A is r x k, B is d x r.
Output:
```python
def merge(W, A, B, scale):
    # Input: weights; Output: merged weights
    return W + scale * (B @ A)
```

Triple 2:
Instruction: Give the training configuration as JSON.
Input:
{
  "lr": 3e-4,
  "warmup": 2000
}
Output: {"optimizer": "AdamW", "schedule": "cosine"}

Triple 3:
Instruction: List the architectural choices.
Input: None
Output:
- rotary position embeddings
- SwiGLU activations
- RMSNorm
'''
    r = parse_reply(reply)
    assert len(r.triples) == 3
    code = r.triples[0]["output"]
    assert code.startswith("```python") and code.rstrip().endswith("```")
    assert "    return W + scale * (B @ A)" in code          # indentation kept
    assert "# Input: weights; Output: merged weights" in code  # labels inside code stay in the field
    assert json.loads(r.triples[1]["input"]) == {"lr": 3e-4, "warmup": 2000}
    assert r.triples[2]["output"].splitlines() == ["- rotary position embeddings", "- SwiGLU activations", "- RMSNorm"]


def test_quotes_around_fields_are_stripped():
    reply = ('Triple 1:\nInstruction: "What is speculative decoding?"\nInput: "A draft model proposes tokens."\n'
             'Output: “A target model verifies tokens proposed by a draft model.”')
    t = parse_reply(reply).triples[0]
    assert t["instruction"] == "What is speculative decoding?"
    assert t["input"] == "A draft model proposes tokens."
    assert t["output"] == "A target model verifies tokens proposed by a draft model."


def test_inner_quotes_are_kept():
    assert clean_field('He said "yes" and "no"') == 'He said "yes" and "no"'
    assert clean_field('"x" and "y"') == '"x" and "y"'


def test_trailing_markup_and_separators_are_removed():
    reply = "**Triple 1:**\n**Instruction:** Explain KV caching.**\nInput: none\nOutput: It stores keys and values. **\n\n---\n"
    t = parse_reply(reply).triples[0]
    assert t["instruction"] == "Explain KV caching."
    assert t["output"] == "It stores keys and values."


@pytest.mark.parametrize("reply, reason", [
    ("", "empty_reply"),
    ("I'm sorry, but I cannot help with generating content from this text.", "refusal"),
    ("Please provide the text you would like me to generate triples from.", "asks_for_text"),
    ("It seems you haven't provided any text. Could you share it?", "asks_for_text"),
    ("Triple 1:\nInstruction: [instruction]\nInput: [input]\nOutput: [output]\n\nTriple 2:\n"
     "Instruction: [instruction]\nInput: [input]\nOutput: [output]", "template_echo"),
    ("The paper discusses attention mechanisms in detail.", "no_triples"),
])
def test_replies_without_triples_get_a_reason(reply, reason):
    r = parse_reply(reply)
    assert r.triples == [] and r.reason == reason


def test_template_echo_is_dropped_but_real_triples_kept():
    reply = PLAIN + "\n\nTriple 4:\nInstruction: [instruction]\nInput: [input]\nOutput: [output]"
    r = parse_reply(reply)
    assert len(r.triples) == 3 and r.dropped["template_echo"] == 1 and r.reason is None


def test_triple_without_output_is_counted():
    r = parse_reply("Triple 1:\nInstruction: Explain the figure.\nInput: Figure 2")
    assert r.triples == [] and r.dropped["missing_output"] == 1 and r.reason == "incomplete_triples"


def test_header_with_fields_on_the_same_line():
    r = parse_reply("Triple 1: Instruction: What is RMSNorm?\nInput: none\nOutput: A normalisation layer.")
    assert r.triples == [{"instruction": "What is RMSNorm?", "input": "", "output": "A normalisation layer."}]


def test_json_mode_valid_and_fenced_and_capitalised():
    obj = {"triples": [{"instruction": "Define LoRA.", "input": "", "output": "Low-rank adaptation."},
                       {"Instruction": "Define QLoRA.", "Input": "n/a", "Output": "LoRA on a 4-bit base."}]}
    r = parse_json_reply(json.dumps(obj))
    assert [t["instruction"] for t in r.triples] == ["Define LoRA.", "Define QLoRA."]
    assert r.triples[1]["input"] == ""
    fenced = "```json\n" + json.dumps(obj["triples"]) + "\n```"
    assert len(parse_json_reply(fenced).triples) == 2


@pytest.mark.parametrize("reply, reason", [
    ('{"triples": [', "invalid_json"),
    ('{"answer": 42}', "bad_schema"),
    ('{"triples": [{"instruction": "", "output": ""}]}', "bad_schema"),
    ('{"triples": [{"instruction": "[instruction]", "input": "", "output": "[output]"}]}', "template_echo"),
    ("", "empty_reply"),
])
def test_json_mode_invalid_replies_are_counted(reply, reason):
    r = parse_json_reply(reply)
    assert r.triples == [] and r.reason == reason


def _t(ins, out="A sufficiently long answer.", inp=""):
    return {"instruction": ins, "input": inp, "output": out}


def test_quality_filter_counts_every_drop_reason():
    qf = QualityFilter(min_instruction_chars=10, min_output_chars=5, max_output_chars=100)
    kept = [t for t in [
        _t("Explain how rotary position embeddings work."),
        _t("Explain how rotary position embeddings work."),               # exact duplicate
        _t("Explain how the rotary position embeddings work."),           # near duplicate (ROUGE-L ~0.94)
        _t("Why?"),                                                       # too short instruction
        _t("Describe the training schedule.", out="ok"),                  # too short output
        _t("Describe the data mix of the corpus.", out="x" * 101),        # too long
        _t("", out="orphan output"),                                      # empty instruction
        _t("Compare continuous batching with static batching."),          # distinct: kept
    ] if qf.keep(t)]
    assert [t["instruction"] for t in kept] == ["Explain how rotary position embeddings work.",
                                                "Compare continuous batching with static batching."]
    assert qf.drops == {"exact_duplicate": 1, "near_duplicate_instruction": 1, "too_short": 2, "too_long": 1,
                        "empty_field": 1}


def test_near_duplicate_threshold_is_a_parameter():
    a, b = _t("Explain how rotary position embeddings work."), _t("Explain how the rotary position embeddings work.")
    qf = QualityFilter(near_dup_rouge_l=1.0)
    assert qf.keep(a) and qf.keep(b)


def test_clean_field_keeps_bold_text_and_strips_only_unpaired_markers():
    assert clean_field("**Bold** start") == "**Bold** start"
    assert clean_field("plain **end**") == "plain **end**"
    assert clean_field('"LoRA adds low-rank updates."\n\n**') == "LoRA adds low-rank updates."
    assert clean_field("** answer") == "answer"
    assert clean_field("text\n\n**\n---") == "text"
