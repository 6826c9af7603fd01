"""Chat completions from a local causal LM through the engine (what 03's `local` backend runs)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .engine import GenerationEngine, generate_in_order
from .params import GenParams


@dataclass
class LocalReply:
    """One reply: its new token ids (up to the stop token), text, prompt size and why it ended."""

    ids: list
    text: str
    prompt_tokens: int
    finish_reason: str     # "stop" | "length"


def complete_prompts(engine: GenerationEngine, prompts: Sequence[str], *, max_tokens: int, temperature: float = 0.0,
                     repetition_penalty: float = 1.0, batch_size: int = 8,
                     seed: int = 0) -> tuple[list[LocalReply], dict]:
    """Replies to already-formatted prompt texts (chat template applied), in input order, and what ran."""
    tok = engine.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    gen = GenParams(max_new_tokens=max_tokens, do_sample=bool(temperature and temperature > 0),
                    temperature=temperature or 1.0, top_p=1.0, seed=seed, stop_markers=(),
                    repetition_penalty=repetition_penalty)
    rows, info = generate_in_order(engine, ids, gen, batch_size)
    replies = [LocalReply(r["ids"], tok.decode(r["ids"], skip_special_tokens=True), len(p),
                          "stop" if r["stopped"] else "length") for r, p in zip(rows, ids)]
    return replies, info

