"""The plain path: one left-padded Hugging Face `generate` call per batch (dynamic KV cache, PEFT's LoRA layers
as they are). What 05 and 03 ran before the engine; the engine keeps it on CPU, where compiling does not pay,
and for settings the static path does not cover."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .params import GenParams, left_pad, rows_from_new_tokens


def generate_plain(model, batch: Sequence[Sequence[int]], pad_id: int, stop_ids: Sequence[int], gen: GenParams,
                   tokenizer=None) -> list[dict]:
    """One left-padded `generate` call; per row the new token ids up to the stop token, and whether it
    stopped (else it ran into max_new_tokens). `tokenizer` enables the per-sequence stop markers."""
    import torch

    device = next(model.parameters()).device
    ids, mask = left_pad(batch, pad_id)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens or None, do_sample=gen.do_sample,
        pad_token_id=pad_id, eos_token_id=list(stop_ids), num_beams=1)
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if gen.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = gen.repetition_penalty
    if gen.static_cache:
        kwargs["cache_implementation"] = "static"
    if tokenizer is not None and gen.stop_markers and not gen.min_new_tokens:
        kwargs.update(stop_strings=list(gen.stop_markers), tokenizer=tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    return rows_from_new_tokens(out[:, ids.shape[1]:].tolist(), stop_ids)
