"""nbutils.parse.chunk: chunks by whitespace tokens with overlap, and with a real tokenizer."""
from __future__ import annotations

from nbutils.parse import chunk_text
from tests.support.pdfs import body_lines


# ---------------------------------------------------------------- cleaning rules on crafted text
def test_chunking_by_whitespace_tokens_with_overlap():
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunk_text(text, chunk_tokens=10, overlap=3)
    assert chunks[0].split() == [f"w{i}" for i in range(10)]
    assert chunks[1].split()[:3] == ["w7", "w8", "w9"]
    assert chunks[-1] == "w21 w22 w23 w24" and len(chunks) == 4
    assert chunk_text(text, 0) == [text]


def test_chunking_with_a_real_tokenizer(embedded_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_path))
    text = " ".join(body_lines(3, 20))
    chunks = chunk_text(text, chunk_tokens=50, overlap=10, tokenizer=tok)
    assert len(chunks) > 2 and all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 52 for c in chunks)
    assert text.startswith(chunks[0]) and text.endswith(chunks[-1])
