"""03's local backend through the engine: replies equal Hugging Face `generate`'s (the backend's path before the
engine) with the repetition penalty, on the static path as on the plain one."""
from __future__ import annotations

import pytest
import torch

from nbutils.decoding import EngineSettings, GenerationEngine
from nbutils.decoding.local import complete_prompts
from tests.support.tiny_llama import IdTokenizer, prompts, tiny_llama


class PromptTokenizer(IdTokenizer):
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - ord("!") for c in text]}


def test_complete_prompts_static_equals_plain_with_repetition_penalty():
    model = tiny_llama(seed=7)
    tok = PromptTokenizer()
    texts = ["".join(chr(ord("!") + i) for i in p) for p in prompts(5, seed=8)]
    out = {}
    for path in ("plain", "static"):
        engine = GenerationEngine(model, tok, EngineSettings(path=path, compile=False))
        replies, info = complete_prompts(engine, texts, max_tokens=9, repetition_penalty=1.3, batch_size=4)
        out[path] = [(r.ids, r.finish_reason, r.prompt_tokens) for r in replies]
        assert info["path"] == path
    assert out["plain"] == out["static"]
    assert [p for _, _, p in out["plain"]] == [len(t) for t in texts]
    assert all(f in ("stop", "length") for _, f, _ in out["plain"])


@pytest.mark.slow
def test_local_backend_replies_equal_generate_on_the_embedded_model(data_dir_with_model):
    from nbutils.llm import LocalBackend

    be = LocalBackend(data_dir=str(data_dir_with_model), batch_size=2, reply_prefix="Triple 1:\nInstruction:",
                      repetition_penalty=1.15, threads=1)
    convs = [[{"role": "user", "content": f"Here is a text: {t}. Write a question about it."}]
             for t in ("Low-rank adapters train few weights", "Quantized models use less memory")]
    replies = be.complete_batch(convs, max_tokens=12)
    enc = be.tokenizer([be._prompt(m) for m in convs], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():   # the backend's call before the engine
        out = be.lm.generate(**enc, max_new_tokens=12, pad_token_id=be.tokenizer.pad_token_id,
                             repetition_penalty=1.15, do_sample=False, temperature=None, top_p=None, top_k=None)
    for r, row in zip(replies, out[:, enc["input_ids"].shape[1]:].tolist()):
        n = next((k for k, t in enumerate(row) if t in (be.tokenizer.eos_token_id, be.tokenizer.pad_token_id)),
                 len(row))
        assert r.text == be.reply_prefix + be.tokenizer.decode(row[:n], skip_special_tokens=True)
        assert r.completion_tokens == n and r.prompt_tokens > 0
