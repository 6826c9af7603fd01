"""Prompt templates shared by training (04) and evaluation (05): one definition, so both see the same text."""
from __future__ import annotations

ALPACA = "alpaca"
CHAT = "chat"
TEMPLATES = (ALPACA, CHAT)

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The original project's "### Instruction / ### Input / ### Response" prompt (response left open)."""
    instruction, input = (instruction or "").strip(), (input or "").strip()
    if input:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def chat_messages(instruction: str, input: str = "") -> list[dict]:
    content = (instruction or "").strip()
    if (input or "").strip():
        content += "\n\n" + input.strip()
    return [{"role": "user", "content": content}]


def build_prompt(instruction: str, input: str = "", template: str = ALPACA, tokenizer=None) -> str:
    """The prompt text up to where the answer starts, for `template` in TEMPLATES."""
    if template == ALPACA:
        return alpaca_prompt(instruction, input)
    if template == CHAT:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template; use template='alpaca'")
        return tokenizer.apply_chat_template(chat_messages(instruction, input), tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}: expected one of {', '.join(TEMPLATES)}")
