"""Padding-free packed attention without flash-attn: PyTorch's own flash kernels through
`torch.nn.attention.varlen.varlen_attn`, registered with transformers as the attention implementation "sdpa_varlen".

TRL's padding-free collator flattens a micro-batch into one row and passes `cu_seq_lens_q/k` and `max_length_q/k`
(or only position ids that restart at 0 for each sample); transformers hands them to the attention function as
kwargs. With them, each sample attends only to itself (block-diagonal causal) at flash-attention speed and with no
(T x T) mask: 1.88x faster than SDPA with transformers' block mask on an H100 (benchmarks/RESULTS.md). Padded
batches and generation go to transformers' SDPA path unchanged. Where the kernel cannot run (CPU, a GPU older than
Ampere, attention dropout in training) a packed row still never mixes samples: SDPA gets a block-diagonal mask.

    from nbutils.kernels.attention import register, VARLEN
    register(); model.set_attn_implementation(VARLEN)   # or load_causal_lm(..., attn_implementation=VARLEN)
"""
from __future__ import annotations

import inspect

VARLEN = "sdpa_varlen"


def varlen_importable() -> bool:
    """True when this torch ships `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except Exception:
        return False
    return True


def kernel_usable(device=None) -> bool:
    """True when the varlen flash kernel can run here: CUDA, Ampere or newer, and the kernel imports."""
    import torch

    if not torch.cuda.is_available() or not varlen_importable():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


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


def cu_seqlens_from_position_ids(position_ids):
    """[0, start of sample 2, ..., T] from position ids that restart at 0 for each packed sample."""
    import torch

    pos = position_ids[0]
    starts = (pos == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)


def block_causal_mask(cu, length: int, device):
    """(1, 1, T, T) boolean mask, True where a token may attend: causal and inside its own sample."""
    import torch

    seg = torch.zeros(length, dtype=torch.long, device=device)
    seg[cu[1:-1].to(device=device, dtype=torch.long)] = 1
    seg = seg.cumsum(0)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return (causal & (seg[:, None] == seg[None, :]))[None, None]


def sdpa_varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention interface: query (B, Hq, S, D), key/value (B, Hkv, S, D) -> ((B, S, Hq, D), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    pos = kwargs.get("position_ids")
    one_unmasked_row = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    if cu is None and one_unmasked_row and pos is not None and pos.shape[-1] == query.shape[2]:
        cu = cu_seqlens_from_position_ids(pos)  # packed rows without TRL's cu_seq_lens (one host sync)
        kwargs["max_length_q"] = None
    use_kernel = (cu is not None and one_unmasked_row and query.is_cuda and not (dropout and module.training)
                  and kernel_usable(query.device))
    if not use_kernel:
        if cu is not None and one_unmasked_row and cu.numel() > 2:  # several samples in one row: keep them apart
            attention_mask = block_causal_mask(cu, query.shape[2], query.device)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    dtype = query.dtype
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
    if dtype not in (torch.float16, torch.bfloat16):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    max_len = kwargs.get("max_length_q")
    max_len = int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max())
    # squeeze, not [0]: indexing's backward writes each gradient into a fresh zero tensor (three full copies a
    # layer), and that copy's layout then makes Liger's RoPE backward copy the q/k gradients again
    q = query.squeeze(0).transpose(0, 1).to(dtype)  # (S, Hq, D)
    k = key.squeeze(0).transpose(0, 1).to(dtype)
    v = value.squeeze(0).transpose(0, 1).to(dtype)
    out = _varlen_call(q, k, v, cu.to(device=q.device, dtype=torch.int32), max_len, scaling)
    return out.unsqueeze(0), None                   # (1, S, Hq, D)


def varlen_mask(*args, **kwargs):
    """SDPA's mask where there is padding; none for a single unpadded row (padding-free packing), where the
    attention function itself keeps samples apart: no (T x T) mask built for nothing."""
    from transformers.masking_utils import sdpa_mask

    if (kwargs.get("attention_mask") is None and kwargs.get("batch_size", 0) == 1
            and kwargs.get("q_length") == kwargs.get("kv_length") and not kwargs.get("q_offset")):
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register VARLEN with transformers (attention function + SDPA's mask builder). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, sdpa_varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
    return VARLEN


def set_attention(model, impl: str) -> str:
    """Switch a loaded model's attention (registering VARLEN first when asked); returns what it now uses."""
    if impl == VARLEN:
        register()
    try:
        model.set_attn_implementation(impl)
    except Exception:
        model.config._attn_implementation = impl
    return model.config._attn_implementation
