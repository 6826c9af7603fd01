"""nbutils.decoding.gqa: the grouped-query decode attention equals SDPA with repeated heads."""
from __future__ import annotations

import torch

from tests.support.tiny_llama import tiny_llama


def test_gqa_decode_attention_equals_sdpa_with_repeated_heads():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from nbutils.decoding.gqa import applies, gqa_decode_attention

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, L, D = 3, 8, 2, 20, 16
    q = torch.randn(B, H, 1, D, generator=g)
    k, v = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    mask = torch.rand(B, 1, 1, L, generator=g) > 0.3
    mask[:, :, :, 0] = True

    class Module:
        num_key_value_groups, is_causal, training = H // Hkv, True, False

    ours, _ = gqa_decode_attention(Module(), q, k, v, mask, scaling=D ** -0.5)
    ref, _ = sdpa_attention_forward(Module(), q, k, v, mask, scaling=D ** -0.5)
    assert ours.shape == ref.shape == (B, 1, H, D)
    assert torch.allclose(ours, ref, atol=1e-5)
    model = tiny_llama()
    assert applies(model.config) == (model.config._attn_implementation == "sdpa")
