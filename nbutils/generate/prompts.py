"""The prompts 03 sends: the original project's (three `Triple N:` blocks), a JSON one, the demo's short one,
or a user's file. A prompt's `version` (name@hash) is part of every cache key: a new prompt is new work."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, sha256_text

# The original project's prompt (reconstructed): three "Triple N:" blocks from one page of a paper.
ORIGINAL_PROMPT = """Generate three instruction-input-output triples based on the following text from a research paper. Each triple should have an instruction (a task or question about the text), an input (the context the task needs, which may be empty) and the expected output. Format each triple exactly as follows:

Triple 1:
Instruction: [instruction]
Input: [input]
Output: [output]

Triple 2:
Instruction: [instruction]
Input: [input]
Output: [output]

Triple 3:
Instruction: [instruction]
Input: [input]
Output: [output]

Text:
{text}"""

JSON_PROMPT = """Generate three instruction-input-output triples based on the following text from a research paper. Each triple has an instruction (a task or question about the text), an input (the context the task needs, may be "") and the expected output. Reply with JSON only, in this shape:
{"triples": [{"instruction": "...", "input": "...", "output": "..."}, ...]}

Text:
{text}"""

# The demo's 135M model cannot follow the long prompt: a short one, and the reply started for it.
DEMO_PROMPT = """Here is a text from a research paper:

{text}

Write a question about this text and answer it."""
DEMO_REPLY_PREFIX = "Triple 1:\nInstruction:"


# 03's judge (judge.py): one page and the triples made from it -> a JSON verdict per triple.
JUDGE_SYSTEM = ("You check instruction-tuning data made from a page of a research paper. You are strict and "
                "brief, and you reply with JSON only.")

JUDGE_USER = """Page of a research paper:
<<<
{page}
>>>

Triples (instruction, input, output) written from this page:
{triples}

For each triple give:
- "support" (1-5): is everything the output states supported by the page? 5 = fully supported; 4 = supported with a minor gap; 3 = partly supported; 2 = mostly not in the page; 1 = contradicted by the page or unrelated to it.
- "unsupported_claim": when support < 5, the main claim of the output that the page does not support, quoted from the output; else "".
- "clarity" (1-5): is the instruction clear, self-contained (understandable without seeing the page, unless the input supplies the context) and answerable from the input and the page? 5 = yes; 1 = vague, or it points to something the reader cannot see.
- "reason": one short sentence.

Reply with JSON only, one verdict per triple id, in this shape:
{"verdicts": [{"id": 1, "support": 5, "unsupported_claim": "", "clarity": 5, "reason": "..."}]}"""

# A 135M local model cannot be asked for JSON: its reply is started for it (its scores mean nothing anyway).
JUDGE_LOCAL_REPLY_PREFIX = '{"verdicts": [{"id": 1, "support":'


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt: the user message (with `{text}`), an optional system message, an optional start of the
    assistant's reply (local models only), and whether it asks for JSON. `version` = name@hash."""

    name: str
    user: str
    system: str = ""
    reply_prefix: str = ""
    json_mode: bool = False

    @property
    def version(self) -> str:
        return f"{self.name}@{sha256_text(self.system, self.user, self.reply_prefix, str(self.json_mode))[:10]}"

    def messages(self, text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user.replace("{text}", text)}]


BUILTIN_PROMPTS = {
    "original": PromptTemplate("original", ORIGINAL_PROMPT),
    "json": PromptTemplate("json", JSON_PROMPT, json_mode=True),
    "demo": PromptTemplate("demo", DEMO_PROMPT, reply_prefix=DEMO_REPLY_PREFIX),
}


def load_prompt(prompt: str = "original", prompt_file: str | None = None) -> PromptTemplate:
    """A built-in prompt by name, or one read from a file: `.txt` is the user message (with `{text}`),
    `.json` holds {"user", "system"?, "reply_prefix"?, "json_mode"?}. The file's stem names the version."""
    if prompt_file:
        p = Path(prompt_file)
        if not p.exists():
            raise FileNotFoundError(f"prompt_file {p} does not exist")
        if p.suffix == ".json":
            d = read_json(p)
            tpl = PromptTemplate(p.stem, d["user"], d.get("system", ""), d.get("reply_prefix", ""),
                                 bool(d.get("json_mode", False)))
        else:
            tpl = PromptTemplate(p.stem, p.read_text(encoding="utf-8"))
        if "{text}" not in tpl.user:
            raise ValueError(f"prompt_file {p}: the user message has no {{text}} placeholder for the page")
        return tpl
    if prompt not in BUILTIN_PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}: expected one of {', '.join(BUILTIN_PROMPTS)} or a prompt_file")
    return BUILTIN_PROMPTS[prompt]

