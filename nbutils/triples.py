"""Turning an LLM's reply into instruction/input/output triples, and the quality filters.

`parse_reply(text)` handles what real replies look like: plain or bold/heading `Triple N:` headers (or
none), blank lines between fields, 1-5+ triples, multi-line fields (code, JSON, lists) kept whole,
quotes around fields, trailing markup, template echoes, refusals and "please provide the text" replies.
`parse_json_reply(text)` validates a JSON-mode reply. `QualityFilter` drops empty / too short / too long
fields, exact duplicates and near-duplicate instructions (ROUGE-L, via rouge_score), counting every drop.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

FIELDS = ("instruction", "input", "output")
_LABEL_ALIASES = {"instruction": "instruction", "input": "input", "context": "input", "output": "output",
                  "response": "output", "answer": "output"}

# "Triple 1:", "**Triple 1:**", "### Triple 2", "Triple #3 -", "__Triple 4__:", "1. Triple:" is not one.
_HEADER = re.compile(r"^[ \t>#*_-]*(?:\*\*|__)?\s*triple\s*#?\s*(\d+)\s*(?:\*\*|__)?\s*[:.)\-–]?\s*(?:\*\*|__)?",
                     re.IGNORECASE | re.MULTILINE)  # a title after the header is ignored; fields may follow on its line
# "Instruction: x", "**Instruction:** x", "**Instruction**: x", "- Input: x", "1. Output: x", "### Output:"
_LABEL = re.compile(r"^[ \t>#*_-]*(?:\d+[.)]\s*)?(?:\*\*|__)?\s*(instruction|input|context|output|response|answer)"
                    r"\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?[ \t]*", re.IGNORECASE | re.MULTILINE)

_REFUSAL = re.compile(r"\b(i(?:'m| am) (?:sorry|unable|not able)|i can(?:not|'t) (?:help|assist|generate|comply|"
                      r"create|provide)|as an ai\b|i apologi[sz]e)", re.IGNORECASE)
_ASKS_FOR_TEXT = re.compile(r"(please (?:provide|share|paste|send|give)|you (?:haven't|have not|didn't|did not) "
                            r"(?:provide|include|share)|no text (?:was|has been) provided|there is no text|"
                            r"(?:text|passage|content) (?:is )?(?:missing|empty))", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"^\s*(?:[\[<{(]\s*(?:the\s+)?(?:instruction|input|output|response|text|answer|"
                          r"your [a-z ]+)[^\]>})]*[\]>})]|\.{2,}|…|n/?a|none|null|-+|tbd|todo)\s*$", re.IGNORECASE)
_EMPTY_INPUT = re.compile(r"^\s*(?:n/?a|none|null|no input|\(none\)|\(empty\)|-+|\[\s*\]|\"\"|'')\s*\.?\s*$",
                          re.IGNORECASE)
_QUOTES = [('"', '"'), ("“", "”"), ("'", "'"), ("‘", "’"), ("«", "»")]
_TRAILING_MARKUP = re.compile(r"(?:\s*(?:---+|\*\*\*+|===+|#+)\s*)+$")
_BOLD = ("**", "__")


@dataclass
class ParsedReply:
    """Triples found in one reply, and why there are none (`reason`) or why some were rejected (`dropped`)."""

    triples: list[dict] = field(default_factory=list)
    reason: str | None = None               # set when no triple: empty_reply / refusal / asks_for_text / ...
    dropped: Counter = field(default_factory=Counter)   # per-triple rejections: template_echo, missing_output ...


def clean_field(value: str) -> str:
    """Strip surrounding whitespace, markup left by bold labels or separators, and wrapping quotes.
    Inner lines, indentation of code and fenced blocks are kept as they are."""
    v = value.strip("\n").rstrip()
    while True:  # separators at the end, and bold markers left without their pair (`**Bold** start` stays)
        before = v
        v = _TRAILING_MARKUP.sub("", v).strip()
        if v.startswith(_BOLD) and v.count(v[:2]) % 2:
            v = v[2:].strip()
        if v.endswith(_BOLD) and v.count(v[-2:]) % 2:
            v = v[:-2].strip()
        if v == before:
            break
    for _ in range(2):   # `"'x'"` -> x
        for a, b in _QUOTES:
            if len(v) >= 2 and v.startswith(a) and v.endswith(b) and a not in v[1:-1] and b not in v[1:-1]:
                v = v[1:-1].strip()
    return v


def is_placeholder(value: str) -> bool:
    """A template echo such as "[instruction]", "<your output here>" or "..."."""
    return bool(_PLACEHOLDER.match(value)) or bool(re.search(r"\[(?:instruction|input|output)\]", value, re.I))


def _blocks(text: str) -> list[str]:
    """Split the reply into per-triple blocks at `Triple N` headers, else at each `Instruction:` label."""
    heads = list(_HEADER.finditer(text))
    if heads:
        return [text[h.end(): (heads[i + 1].start() if i + 1 < len(heads) else len(text))]
                for i, h in enumerate(heads)]
    starts = [m.start() for m in _LABEL.finditer(text) if _LABEL_ALIASES[m.group(1).lower()] == "instruction"]
    if not starts:
        return []
    return [text[s: (starts[i + 1] if i + 1 < len(starts) else len(text))] for i, s in enumerate(starts)]


def _fields(block: str) -> dict[str, str]:
    """Field values of one block: each runs from its label to the next label (multi-line kept whole)."""
    labels = list(_LABEL.finditer(block))
    out: dict[str, str] = {}
    current = None
    for i, m in enumerate(labels):
        name = _LABEL_ALIASES[m.group(1).lower()]
        end = labels[i + 1].start() if i + 1 < len(labels) else len(block)
        if name not in out:
            out[name], current = block[m.end(): end], name
        else:   # a label seen before inside a field (e.g. "Input:" in code) belongs to the field being read
            out[current] += block[m.start(): end]
    return out


def _no_triple_reason(text: str) -> str:
    if not text.strip():
        return "empty_reply"
    if _ASKS_FOR_TEXT.search(text):
        return "asks_for_text"
    if _REFUSAL.search(text):
        return "refusal"
    return "no_triples"


def parse_reply(text: str) -> ParsedReply:
    """The triples in a free-text reply (the original's "Triple N: Instruction/Input/Output" format)."""
    result = ParsedReply()
    for block in _blocks(text or ""):
        f = {k: clean_field(v) for k, v in _fields(block).items()}
        instruction, inp, output = f.get("instruction", ""), f.get("input", ""), f.get("output", "")
        if not instruction and not output:
            result.dropped["missing_fields"] += 1
            continue
        if is_placeholder(instruction) or is_placeholder(output):
            result.dropped["template_echo"] += 1
            continue
        if not output:
            result.dropped["missing_output"] += 1
            continue
        if not instruction:
            result.dropped["missing_instruction"] += 1
            continue
        if _EMPTY_INPUT.match(inp) or is_placeholder(inp):
            inp = ""
        result.triples.append({"instruction": instruction, "input": inp, "output": output})
    if not result.triples:
        if result.dropped and set(result.dropped) == {"template_echo"}:
            result.reason = "template_echo"
        else:
            result.reason = _no_triple_reason(text or "") if not result.dropped else "incomplete_triples"
    return result


def _strip_code_fence(text: str) -> str:
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    return m.group(1) if m else text


def parse_json_reply(text: str) -> ParsedReply:
    """A JSON-mode reply: {"triples": [{"instruction", "input", "output"}, ...]} (a bare list, capitalised
    keys and a ```json fence are accepted); anything else is counted as invalid_json / bad_schema."""
    result = ParsedReply()
    if not (text or "").strip():
        result.reason = "empty_reply"
        return result
    try:
        data = json.loads(_strip_code_fence(text))
    except ValueError:
        result.reason = "invalid_json"
        return result
    items = data.get("triples", data.get("Triples")) if isinstance(data, dict) else data
    if isinstance(data, dict) and items is None and any(k.lower() == "instruction" for k in data):
        items = [data]
    if not isinstance(items, list):
        result.reason = "bad_schema"
        return result
    for item in items:
        if not isinstance(item, dict):
            result.dropped["bad_schema"] += 1
            continue
        low = {str(k).lower(): v for k, v in item.items()}
        vals = {k: low.get(k) for k in FIELDS}
        if not all(isinstance(v, (str, type(None))) for v in vals.values()):
            vals = {k: v if isinstance(v, str) or v is None else json.dumps(v, ensure_ascii=False)
                    for k, v in vals.items()}
        instruction, inp, output = (clean_field(vals[k] or "") for k in FIELDS)
        if is_placeholder(instruction) or is_placeholder(output):
            result.dropped["template_echo"] += 1
        elif not instruction or not output:
            result.dropped["missing_fields"] += 1
        else:
            result.triples.append({"instruction": instruction, "input": "" if _EMPTY_INPUT.match(inp) else inp,
                                   "output": output})
    if not result.triples:
        result.reason = "template_echo" if set(result.dropped) == {"template_echo"} else "bad_schema"
    return result


# ------------------------------------------------------------------------------------ quality filters
@dataclass
class QualityFilter:
    """Keeps a triple only if its fields have sane lengths and its instruction is new (exact and ROUGE-L)."""

    min_instruction_chars: int = 10
    min_output_chars: int = 3
    max_instruction_chars: int = 1000
    max_input_chars: int = 4000
    max_output_chars: int = 4000
    near_dup_rouge_l: float = 0.7     # Self-Instruct's threshold; 1.0 or more disables the check

    def __post_init__(self):
        from rouge_score import rouge_scorer, tokenize

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._tokenize = tokenize.tokenize
        self._seen_exact: set[tuple] = set()
        self._kept_tokens: list[list[str]] = []
        self._kept_counts: list[Counter] = []
        self._kept_text: list[str] = []
        self._index: dict[str, set[int]] = defaultdict(set)
        self.drops: Counter = Counter()

    def reason_to_drop(self, t: dict) -> str | None:
        ins, inp, out = (t.get(k, "") or "" for k in FIELDS)
        if not ins.strip() or not out.strip():
            return "empty_field"
        if len(ins) < self.min_instruction_chars or len(out) < self.min_output_chars:
            return "too_short"
        if len(ins) > self.max_instruction_chars or len(inp) > self.max_input_chars or len(out) > self.max_output_chars:
            return "too_long"
        key = tuple(" ".join(x.lower().split()) for x in (ins, inp, out))
        if key in self._seen_exact:
            return "exact_duplicate"
        if self._near_duplicate(ins):
            return "near_duplicate_instruction"
        return None

    def _near_duplicate(self, instruction: str) -> bool:
        if self.near_dup_rouge_l >= 1.0:
            return False
        toks = self._tokenize(instruction, None)
        if not toks:
            return False
        counts = Counter(toks)
        candidates: Counter = Counter()
        for tok in counts:
            for j in self._index.get(tok, ()):
                candidates[j] += 1
        for j, _ in candidates.most_common():
            other = self._kept_tokens[j]
            # LCS <= shared multiset tokens: skip pairs that cannot reach the threshold
            shared = sum((counts & self._kept_counts[j]).values())
            bound = 2 * shared / (len(toks) + len(other))
            if bound < self.near_dup_rouge_l:
                continue
            if self._scorer.score(self._kept_text[j], instruction)["rougeL"].fmeasure >= self.near_dup_rouge_l:
                return True
        return False

    def keep(self, t: dict) -> bool:
        """True (and remembered) if the triple passes; else the drop is counted in `drops`."""
        reason = self.reason_to_drop(t)
        if reason:
            self.drops[reason] += 1
            return False
        self._seen_exact.add(tuple(" ".join((t.get(k, "") or "").lower().split()) for k in FIELDS))
        toks = self._tokenize(t["instruction"], None)
        j = len(self._kept_tokens)
        self._kept_tokens.append(toks)
        self._kept_counts.append(Counter(toks))
        self._kept_text.append(t["instruction"])
        for tok in set(toks):
            self._index[tok].add(j)
        return True


__all__ = ["ParsedReply", "parse_reply", "parse_json_reply", "clean_field", "is_placeholder", "QualityFilter"]
