"""The local backend: a transformers causal LM on this machine, batched through the shared generation engine
(nbutils.decoding: HF `generate` on CPU, static KV cache + CUDA graphs on a GPU; the demo's embedded SmolLM2)."""
from __future__ import annotations

import time

from .base import DEFAULT_MODELS, Completion, LLMError, Messages


class LocalBackend:
    """A transformers causal LM on this machine (the demo's embedded SmolLM2 by default), batched through the
    generation engine: left-padded prompts sorted by length. `reply_prefix` is appended after the chat template's
    assistant header (steering a small model into the format) and put back on the reply. `engine`: "auto" (the
    static compiled path on a GPU, plain `generate` on CPU), "plain" or "static"."""

    name = "local"
    supports_json_mode = False

    def __init__(self, model: str | None = None, data_dir: str = "data", batch_size: int = 8,
                 reply_prefix: str = "", repetition_penalty: float = 1.0, threads: int | None = None,
                 engine: str = "auto"):
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
        from ..decoding import EngineSettings, GenerationEngine

        self.engine = GenerationEngine(self.lm, self.tokenizer, EngineSettings(path=engine))

    def _prompt(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
            + self.reply_prefix

    def complete(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.0,
                 json_mode: bool = False) -> Completion:
        return self.complete_batch([messages], max_tokens=max_tokens, temperature=temperature,
                                   json_mode=json_mode)[0]

    def complete_batch(self, conversations: list[Messages], *, max_tokens: int = 512, temperature: float = 0.0,
                       json_mode: bool = False) -> list[Completion]:
        from ..decoding.local import complete_prompts

        if json_mode:
            raise LLMError("config", "backend 'local' has no JSON mode; use json_mode=False")
        t0 = time.monotonic()
        replies, _ = complete_prompts(self.engine, [self._prompt(m) for m in conversations], max_tokens=max_tokens,
                                      temperature=temperature, repetition_penalty=self.repetition_penalty,
                                      batch_size=self.batch_size)
        latency = (time.monotonic() - t0) / max(1, len(replies))
        return [Completion(text=self.reply_prefix + r.text, prompt_tokens=r.prompt_tokens,
                           completion_tokens=len(r.ids), finish_reason=r.finish_reason, model=self.model,
                           latency_s=latency) for r in replies]

