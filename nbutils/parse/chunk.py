"""Optional chunking of a page's text into windows of N tokens (a HF tokenizer's, or whitespace words)."""
from __future__ import annotations

import re
from typing import Any


def token_spans(text: str, tokenizer: Any | None = None) -> list[tuple[int, int]]:
    """Character spans of the tokens: from a fast HF tokenizer's offsets, else of whitespace-separated words."""
    if tokenizer is None:
        return [m.span() for m in re.finditer(r"\S+", text)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(a, b) for a, b in enc["offset_mapping"] if b > a]


def chunk_text(text: str, chunk_tokens: int, overlap: int = 0, tokenizer: Any | None = None) -> list[str]:
    """Split into windows of `chunk_tokens` tokens, consecutive windows sharing `overlap` tokens."""
    if chunk_tokens <= 0:
        return [text]
    spans = token_spans(text, tokenizer)
    if len(spans) <= chunk_tokens:
        return [text]
    step, out = chunk_tokens - overlap, []
    for start in range(0, len(spans), step):
        window = spans[start:start + chunk_tokens]
        out.append(text[window[0][0]:window[-1][1]])
        if start + chunk_tokens >= len(spans):
            break
    return out

