"""The training prompt format, written for each runtime: a Jinja chat template for the tokenizer (transformers,
llama.cpp's --jinja, the GGUF) and an Ollama TEMPLATE with its stop strings.

Alpaca: the tokenizer gets a chat template that renders one user turn exactly as 04 trained
(`nbutils.templates.alpaca_prompt`). Chat: the model's own chat template stays; Ollama's TEMPLATE is written for the
families whose format is known (ChatML, Llama 3) and checked against the tokenizer's rendering."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..templates import ALPACA, ALPACA_NO_INPUT, alpaca_prompt, build_prompt

ALPACA_SYSTEM = ALPACA_NO_INPUT.split("\n\n")[0]   # "Below is an instruction that describes a task. Write ..."

# One user turn renders as alpaca_prompt(content); earlier turns are kept as Instruction/Response pairs.
ALPACA_JINJA = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}{%- set turns = messages[1:] -%}"
    "{%- else -%}{{- '" + ALPACA_SYSTEM + "\\n\\n' -}}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}{{- '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- m['content'] + eos_token + '\\n\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
)

# Ollama's Go template for the same text (its .System defaults to SYSTEM in the Modelfile).
ALPACA_OLLAMA = ("{{ if .System }}{{ .System }}\n\n{{ end }}### Instruction:\n{{ .Prompt }}\n\n### Response:\n"
                 "{{ .Response }}")

CHATML_OLLAMA = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                 "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
LLAMA3_OLLAMA = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
                 "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")


@dataclass(frozen=True)
class RuntimeTemplate:
    """The prompt format for Ollama: TEMPLATE, the default SYSTEM (None: none), stop strings, and which family."""

    family: str
    ollama_template: str | None
    system: str | None
    stops: tuple[str, ...]


def render_ollama(template: str, prompt: str, system: str | None) -> str:
    """The prompt Ollama sends for one user turn, up to where the answer starts (the subset of Go templates used
    above: `{{ if .System }}...{{ end }}`, `.System`, `.Prompt`, `.Response`)."""
    def cond(m: re.Match) -> str:
        return m.group(1) if system else ""

    text = re.sub(r"\{\{ if \.System \}\}(.*?)\{\{ end \}\}", cond, template, flags=re.DOTALL)
    text = text.replace("{{ .System }}", system or "").replace("{{ .Prompt }}", prompt)
    return text.split("{{ .Response }}")[0]


def chat_family(tokenizer) -> str:
    """'chatml', 'llama3' or 'other', from the tokens the chat template writes."""
    t = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in t:
        return "chatml"
    if "<|start_header_id|>" in t:
        return "llama3"
    return "other"


def stop_strings(tokenizer, template: str) -> tuple[str, ...]:
    """Where an answer ends: the EOS token, and for Alpaca the start of a next section (nbutils' stop markers)."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    if template == ALPACA:
        stops += ["### Instruction:", "### Response:", "### Input:"]
    else:
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
            if tok in (getattr(tokenizer, "chat_template", "") or "") and tok not in stops:
                stops.append(tok)
    return tuple(dict.fromkeys(s for s in stops if s))


def default_system(tokenizer) -> str | None:
    """The system text the model's chat template adds to a lone user turn (SmolLM2 adds one), or None."""
    probe = "\x00PROMPT\x00"
    text = build_prompt(probe, "", "chat", tokenizer)
    fam = chat_family(tokenizer)
    if fam == "chatml":
        m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", text, flags=re.DOTALL)
    elif fam == "llama3":
        m = re.search(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", text, flags=re.DOTALL)
    else:
        m = None
    return m.group(1) if m else None


def runtime_template(tokenizer, template: str) -> RuntimeTemplate:
    """The Ollama template for what 04 trained with; checked: rendered with a probe prompt, it equals the training
    prompt (else no TEMPLATE is written and the caller says so)."""
    stops = stop_strings(tokenizer, template)
    if template == ALPACA:
        rt = RuntimeTemplate("alpaca", ALPACA_OLLAMA, ALPACA_SYSTEM, stops)
        expected = alpaca_prompt("PROBE")
    else:
        fam = chat_family(tokenizer)
        tmpl = {"chatml": CHATML_OLLAMA, "llama3": LLAMA3_OLLAMA}.get(fam)
        rt = RuntimeTemplate(fam, tmpl, default_system(tokenizer), stops)
        expected = build_prompt("PROBE", "", template, tokenizer)
        if fam == "llama3" and expected.startswith("<|begin_of_text|>"):
            expected = expected[len("<|begin_of_text|>"):]   # llama.cpp and Ollama add BOS themselves
    if rt.ollama_template is None or render_ollama(rt.ollama_template, "PROBE", rt.system) != expected:
        return RuntimeTemplate(rt.family, None, rt.system, stops)
    return rt
