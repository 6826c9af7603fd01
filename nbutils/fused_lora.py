"""LoRA layers with the adapter's scale and sum folded into one GEMM: `addmm(base(x), A(dropout(x)), B^T, alpha=s)`.

PEFT computes `result = base(x).clone(); result = result + lora_B(lora_A(dropout(x))) * scaling`: besides the two
matmuls that is a clone, a multiply and an add over the full output (T x out_features) in the forward, and a multiply
in the backward, for each of the seven projections of every layer. Here the scale and the sum ride in the epilogue
of the lora_B GEMM (`torch.addmm(result, a, B^T, alpha=scaling)`), so those passes disappear; the math is the same
(one rounding instead of three), the weights, dropout, the adapter file and `merge_and_unload` are PEFT's own.

Only the plain case is fused: one active vanilla LoRA adapter (no DoRA or other variant, no lora_B bias), not merged,
no per-call adapter names, and either autocast on or the input already in the adapter's dtype. Anything else goes
to PEFT's own forward unchanged.

    from nbutils.fused_lora import fuse_lora_layers
    n = fuse_lora_layers(peft_model)          # after the adapter is attached (e.g. after SFTTrainer(...))
"""
from __future__ import annotations

import types

_ORIGINAL = "_nbutils_unfused_forward"


def _lora_layer_class():
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def _plain_adapter(layer, x, args, kwargs) -> str | None:
    """The one active adapter's name when this call can be fused, else None."""
    import torch

    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name, False):
        return None
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    if not isinstance(lora_a, torch.nn.Linear) or not isinstance(lora_b, torch.nn.Linear) or lora_b.bias is not None:
        return None
    if not torch.is_autocast_enabled(x.device.type) and x.dtype != lora_a.weight.dtype:
        return None  # PEFT casts around the adapter in this case: leave it to PEFT
    return name


def fused_lora_forward(self, x, *args, **kwargs):
    """Drop-in forward for a PEFT LoRA layer (nn.Linear or bitsandbytes 4-bit base)."""
    import torch

    name = _plain_adapter(self, x, args, kwargs)
    if name is None:
        return getattr(self, _ORIGINAL)(x, *args, **kwargs)
    result = self.base_layer(x)
    a = self.lora_A[name](self.lora_dropout[name](x))
    weight_b = self.lora_B[name].weight
    if not torch.is_autocast_enabled(x.device.type) and result.dtype != a.dtype:
        out = result + torch.nn.functional.linear(a, weight_b).to(result.dtype) * self.scaling[name]
        return out
    out = torch.addmm(result.reshape(-1, result.shape[-1]), a.reshape(-1, a.shape[-1]), weight_b.t(),
                      alpha=self.scaling[name])
    return out.view(result.shape)


def fuse_lora_layers(model) -> int:
    """Give every PEFT LoRA layer of `model` the fused forward; returns how many layers now have it. Idempotent."""
    lora_layer = _lora_layer_class()
    n = 0
    for module in model.modules():
        if not isinstance(module, lora_layer) or not hasattr(module, "base_layer"):
            continue
        if _ORIGINAL not in module.__dict__:
            module.__dict__[_ORIGINAL] = module.forward
            module.forward = types.MethodType(fused_lora_forward, module)
        n += 1
    return n


def unfuse_lora_layers(model) -> int:
    """Back to PEFT's own forward everywhere; returns how many layers were restored."""
    n = 0
    for module in model.modules():
        if _ORIGINAL in module.__dict__:
            del module.__dict__["forward"]
            del module.__dict__[_ORIGINAL]
            n += 1
    return n


def fused_layer_count(model) -> int:
    return sum(1 for m in model.modules() if _ORIGINAL in m.__dict__)
