"""The local backend: a transformers causal LM on this machine, batched (the demo's embedded SmolLM2)."""
from __future__ import annotations

import time

from .base import DEFAULT_MODELS, Completion, LLMError, Messages


class LocalBackend:
    """A transformers causal LM on this machine (the demo's embedded SmolLM2 by default), batched:
    left-padded prompts sorted by length, one `generate` per batch. `reply_prefix` is appended after the
    chat template's assistant header (steering a small model into the format) and put back on the reply."""

    name = "local"
    supports_json_mode = False

    def __init__(self, model: str | None = None, data_dir: str = "data", batch_size: int = 8,
                 reply_prefix: str = "", repetition_penalty: float = 1.0, threads: int | None = None):
        import torch

        from ..models import load_causal_lm, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model = model or DEFAULT_MODELS["local"]
        self.batch_size, self.reply_prefix, self.repetition_penalty = batch_size, reply_prefix, repetition_penalty
        self.tokenizer = load_tokenizer(self.model, data_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = load_causal_lm(self.model, data_dir)
        self.lm.eval()

    def _prompt(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
            + self.reply_prefix

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion:
        return self.complete_batch([messages], max_tokens=max_tokens, temperature=temperature,
                                   json_mode=json_mode)[0]

    def complete_batch(self, conversations: list[Messages], *, max_tokens: int = 512, temperature: float = 0.0,
                       json_mode: bool = False) -> list[Completion]:
        import torch

        if json_mode:
            raise LLMError("config", "backend 'local' has no JSON mode; use json_mode=False")
        prompts = [self._prompt(m) for m in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        enc = self.tokenizer([prompts[i] for i in order], return_tensors="pt", padding=True,
                             add_special_tokens=False)
        gen_kwargs: dict = {"max_new_tokens": max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                            "repetition_penalty": self.repetition_penalty}
        if temperature and temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        t0 = time.monotonic()
        with torch.inference_mode():
            out = self.lm.generate(**enc, **gen_kwargs)
        latency = time.monotonic() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        results: list = [None] * len(prompts)
        for row, i in enumerate(order):
            ids = new[row].tolist()
            n = next((k for k, t in enumerate(ids) if t in eos), len(ids))
            text = self.reply_prefix + self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            results[i] = Completion(text=text, prompt_tokens=int(enc["attention_mask"][row].sum()),
                                    completion_tokens=n, finish_reason="stop" if n < len(ids) else "length",
                                    model=self.model, latency_s=latency / len(prompts))
        return results

