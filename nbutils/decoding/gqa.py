"""Decode-step attention for grouped-query models without copying K and V per query head.

With a padding mask, transformers' SDPA integration (at least up to 5.17 with torch 2.11) expands K and V from the
key/value heads to every query head (`repeat_kv`) before calling SDPA: at batch 64 over a static cache that is
gigabytes written and read per step (Llama-3-8B: 4 query heads per K/V head). For one query token per row the
attention is two small matmuls, which this function does per K/V head group directly; prefill (several query
tokens) goes to transformers' SDPA function unchanged. Softmax in float32.
"""
from __future__ import annotations

import contextlib

NAME = "nbutils_gqa_decode"


def gqa_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(attn_output (B, q, H, D), None), as transformers' attention functions return."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, q_len, D = query.shape
    Hkv = key.shape[1]
    if q_len != 1 or Hkv == H or attention_mask is None or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else D ** -0.5
    q = query.reshape(B, Hkv, H // Hkv, D)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale          # (B, Hkv, G, L)
    mask = attention_mask[:, :, -1:, :]                                       # (B, 1, 1, L)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)                                          # (B, Hkv, G, D)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, gqa_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def applies(config) -> bool:
    """SDPA models whose key/value heads are fewer than their query heads."""
    heads = getattr(config, "num_attention_heads", 0)
    kv = getattr(config, "num_key_value_heads", None) or heads
    return getattr(config, "_attn_implementation", None) == "sdpa" and kv < heads


@contextlib.contextmanager
def decode_attention(lm, enabled: bool = True):
    """The model's attention switched to gqa_decode_attention for what runs inside (when it applies)."""
    cfg = lm.config
    if not enabled or not applies(cfg):
        yield False
        return
    register()
    before = cfg._attn_implementation
    cfg._attn_implementation = NAME
    try:
        yield True
    finally:
        cfg._attn_implementation = before
