"""Padding-free packed attention without flash-attn: PyTorch's own flash kernels through
`torch.nn.attention.varlen.varlen_attn`, registered as a transformers attention implementation.

TRL's padding-free collator flattens a micro-batch into one row and passes `cu_seq_lens_q/k` and
`max_length_q/k`; transformers hands them to the attention function as kwargs. With them, each sample
attends only to itself (block-diagonal causal) at flash-attention speed and with no (T x T) mask. Without
them (padded batches, generation) it falls back to transformers' SDPA path unchanged.

    from benchmarks.gpu_varlen_attention import register, NAME
    register(); model.set_attn_implementation(NAME)   # or config._attn_implementation = NAME

Used by benchmarks/bench_finetune_gpu.py (issue 8); proposed for nbutils (see benchmarks/RESULTS.md).
"""
from __future__ import annotations

import inspect

NAME = "sdpa_varlen"


def varlen_available() -> bool:
    try:
        import torch
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def _varlen_call(q, k, v, cu, max_len: int, scale: float | None):
    """q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D), causal within each [cu[i], cu[i+1])."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs = {}
    if "is_causal" in params:          # torch 2.10/2.11
        kwargs["is_causal"] = True
    else:                              # newer: causal is window (-1, 0)
        kwargs["window_size"] = (-1, 0)
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-6:
        raise ValueError("this torch's varlen_attn takes no scale and the model's is not 1/sqrt(head_dim)")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # older wrapper: the flash kernel takes fewer KV heads natively; repeat only if refused
            try:
                return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)
            except Exception:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def sdpa_varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention interface: query (B, Hq, S, D), key/value (B, Hkv, S, D) -> ((B, S, Hq, D), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    pos = kwargs.get("position_ids")
    if cu is None and attention_mask is None and pos is not None and query.shape[0] == 1 and query.is_cuda:
        cu = cu_seqlens_from_position_ids(pos)  # packed rows without TRL's cu_seq_lens (one host sync)
        kwargs["max_length_q"] = None
    if cu is None or query.shape[0] != 1 or not query.is_cuda or (dropout and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    dtype = query.dtype
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
    if dtype not in (torch.float16, torch.bfloat16):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    max_len = kwargs.get("max_length_q")
    max_len = int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max())
    q = query[0].transpose(0, 1).to(dtype)          # (S, Hq, D)
    k = key[0].transpose(0, 1).to(dtype)
    v = value[0].transpose(0, 1).to(dtype)
    out = _varlen_call(q, k, v, cu.to(device=q.device, dtype=torch.int32), max_len, scaling)
    return out.unsqueeze(0), None                   # (1, S, Hq, D)


def cu_seqlens_from_position_ids(position_ids):
    """[0, start of sample 2, ..., T] from position ids that restart at 0 for each packed sample."""
    import torch

    pos = position_ids[0]
    starts = (pos == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)


def varlen_mask(*args, **kwargs):
    """SDPA's mask where there is padding; none for a single unpadded row (padding-free packing), where the
    attention function itself keeps samples apart: no (T x T) mask built for nothing."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None and kwargs.get("batch_size", 0) == 1:
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register NAME with transformers (attention function + SDPA's mask builder). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
