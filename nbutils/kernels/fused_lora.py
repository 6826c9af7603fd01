"""LoRA layers with the adapter's scale and sum folded into one GEMM: `addmm(base(x), A(dropout(x)), B^T, alpha=s)`.

PEFT computes `result = base(x).clone(); result = result + lora_B(lora_A(dropout(x))) * scaling`: besides the two
matmuls that is a clone, a multiply and an add over the full output (T x out_features) in the forward, and a multiply
in the backward, for each of the seven projections of every layer. Here the scale and the sum ride in the epilogue
of the lora_B GEMM (`torch.addmm(result, a, B^T, alpha=scaling)`), so those passes disappear; the math is the same
(one rounding instead of three), the weights, dropout, the adapter file and `merge_and_unload` are PEFT's own.

In training (a frozen 4-bit or dense base, gradients on), the whole layer is one autograd node (`FusedLoRA` below):
the LoRA input gradient is added in place into the base layer's, and with `keep_base_weight` the dequantised 4-bit
weight of the forward serves the backward too. With LoRA dropout on CUDA, the dropout itself is fused as well when
Triton is there (it ships with torch's CUDA wheels): `nbutils.kernels.fused_lora_triton` draws the mask inside the
lora_A GEMM and its two backward kernels, so the dropped copy of x is never written or kept. The mask is a different
random draw from PEFT's, with the same distribution. Without dropout (p = 0, what Unsloth recommends) the node runs
cuBLAS matmuls only and equals PEFT's layer.

Only the plain case is fused: one active vanilla LoRA adapter (no DoRA or other variant, no lora_B bias), not merged,
no per-call adapter names, and either autocast on or the input already in the adapter's dtype. Anything else goes
to PEFT's own forward unchanged.

    from nbutils.kernels.fused_lora import fuse_lora_layers
    n = fuse_lora_layers(peft_model)          # after the adapter is attached (e.g. after SFTTrainer(...))
"""
from __future__ import annotations

import types

import torch

_ORIGINAL = "_nbutils_unfused_forward"
_TRITON_FLAG = "_nbutils_triton_dropout"
_KEEP_FLAG = "_nbutils_keep_base_weight"
_triton_module = None
ALLOW_CPU_INTERPRETER = False   # tests: run the Triton kernels on CPU tensors under TRITON_INTERPRET=1


def triton_kernels():
    """nbutils.kernels.fused_lora_triton, or None where Triton does not import."""
    global _triton_module
    if _triton_module is None:
        try:
            from . import fused_lora_triton
            _triton_module = fused_lora_triton
        except Exception:
            _triton_module = False
    return _triton_module or None


def _plain_adapter(layer, x, args, kwargs) -> str | None:
    """The one active adapter's name when this call can be fused, else None."""
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


def _base_kind(base) -> str | None:
    """"4bit" (bitsandbytes Linear4bit) or "dense" (torch.nn.Linear) for a frozen base the kernels' path can take."""
    weight = getattr(base, "weight", None)
    if weight is None or weight.requires_grad:
        return None
    if type(base).__name__ == "Linear4bit" and getattr(weight, "quant_state", None) is not None:
        return "4bit"
    return "dense" if type(base) is torch.nn.Linear else None


def _base_weight(base, dtype):
    """The frozen base weight (out x in) in `dtype`, for the input gradient."""
    if _base_kind(base) == "4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).to(dtype)
    return base.weight.to(dtype)


def _dropout_kernel_applies(layer, name, x, p) -> bool:
    if not (0.0 < p < 1.0) or not layer.__dict__.get(_TRITON_FLAG, False) or not torch.is_grad_enabled():
        return False
    kernels = triton_kernels()
    if kernels is None or not (x.is_cuda or (kernels.INTERPRET and ALLOW_CPU_INTERPRETER)):
        return False
    if _base_kind(layer.base_layer) is None:
        return False
    return kernels.supported(x.reshape(-1, x.shape[-1]), layer.lora_A[name].weight.shape[0])


def _plain_node_applies(layer, p) -> bool:
    """No dropout, gradients on, a frozen base the node can take: the one-node path without the kernels."""
    return p == 0.0 and torch.is_grad_enabled() and _base_kind(layer.base_layer) is not None


class FusedLoRA(torch.autograd.Function):
    """base(x) + s * B(A(dropout(x))) as one autograd node; p > 0: the dropout inside
    nbutils.kernels.fused_lora_triton's kernels, p = 0: plain matmuls."""

    @staticmethod
    def forward(ctx, x, weight_a, weight_b, layer, p, scaling, seed, dtype):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.dtype != dtype:
            x2 = x2.to(dtype)
        base = layer.base_layer
        w = None
        if layer.__dict__.get(_KEEP_FLAG, False):
            # the dequantised base weight, kept for the backward's input gradient instead of dequantised again there
            w = _base_weight(base, dtype)
            bias = None if base.bias is None else base.bias.to(dtype)
            result = torch.nn.functional.linear(x2, w, bias).view(*x.shape[:-1], w.shape[0])
        else:
            result = base(x)
        wa, wb = weight_a.to(dtype), weight_b.to(dtype)   # the adapter in the compute dtype, cast once a call
        a = triton_kernels().dropout_matmul(x2, wa, seed, p) if p > 0 else torch.mm(x2, wa.t())
        n = result.shape[-1]
        out = result.reshape(-1, n)
        if out.dtype != dtype:
            out = out.to(dtype)
        # in place: base(x)'s output is this node's own (an out-of-place addmm would first copy it whole)
        out.addmm_(a, wb.t(), alpha=scaling)
        ctx.save_for_backward(x2, wa, wb, a, w)
        ctx.layer, ctx.p, ctx.scaling, ctx.seed, ctx.dtype = layer, p, scaling, seed, dtype
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.wa_dtype, ctx.wb_dtype = weight_a.dtype, weight_b.dtype
        return out.view(*result.shape[:-1], n)

    @staticmethod
    def backward(ctx, grad):
        x2, wa, wb, a, w = ctx.saved_tensors
        dtype, p, seed = ctx.dtype, ctx.p, ctx.seed
        kernels = triton_kernels() if p > 0 else None
        g2 = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_a_out = torch.mm(g2, wb) * ctx.scaling                                 # d loss / d a   (M x r)
        grad_wb = (torch.mm(g2.t(), a) * ctx.scaling).to(ctx.wb_dtype) if ctx.needs_input_grad[2] else None
        grad_wa = None
        if ctx.needs_input_grad[1]:
            grad_wa = (kernels.dropout_matmul_grad_a(grad_a_out, x2, seed, p) if kernels
                       else torch.mm(grad_a_out.t(), x2)).to(ctx.wa_dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g2, w if w is not None else _base_weight(ctx.layer.base_layer, dtype))
            if kernels:
                kernels.dropout_matmul_grad_x_(grad_x, grad_a_out, wa, seed, p)
            else:
                grad_x.addmm_(grad_a_out, wa)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, grad_wa, grad_wb, None, None, None, None, None


def fused_lora_forward(self, x, *args, **kwargs):
    """Drop-in forward for a PEFT LoRA layer (nn.Linear or bitsandbytes 4-bit base)."""
    name = _plain_adapter(self, x, args, kwargs)
    if name is None:
        return getattr(self, _ORIGINAL)(x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    kernel_dropout = _dropout_kernel_applies(self, name, x, p)
    if kernel_dropout or _plain_node_applies(self, p):
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        # CPU generator: checkpointing replays it
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if kernel_dropout else 0
        return FusedLoRA.apply(x, self.lora_A[name].weight, self.lora_B[name].weight, self, p if kernel_dropout
                               else 0.0, self.scaling[name], seed, dtype)
    result = self.base_layer(x)
    a = self.lora_A[name](dropout(x))
    weight_b = self.lora_B[name].weight
    out = torch.addmm(result.reshape(-1, result.shape[-1]), a.reshape(-1, a.shape[-1]), weight_b.t(),
                      alpha=self.scaling[name])
    return out.view(result.shape)


def fuse_lora_layers(model, triton_dropout: bool = True, keep_base_weight: bool = False) -> int:
    """Give every PEFT LoRA layer of `model` the fused forward (with the Triton dropout kernels where they apply,
    unless triton_dropout=False); returns how many layers now have it. Idempotent.
    keep_base_weight: where the one-node path runs, keep each 4-bit base weight dequantised from the forward for the
    backward instead of dequantising it twice (speed for memory: without gradient checkpointing the quantised layers'
    bf16 weights are held between a micro-batch's forward and backward, 13 GiB more peak for Llama-3-8B)."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or not hasattr(module, "base_layer"):
            continue
        if _ORIGINAL not in module.__dict__:
            module.__dict__[_ORIGINAL] = module.forward
            module.forward = types.MethodType(fused_lora_forward, module)
        module.__dict__[_TRITON_FLAG] = bool(triton_dropout)
        module.__dict__[_KEEP_FLAG] = bool(keep_base_weight)
        n += 1
    return n


def unfuse_lora_layers(model) -> int:
    """Back to PEFT's own forward everywhere; returns how many layers were restored."""
    n = 0
    for module in model.modules():
        if _ORIGINAL in module.__dict__:
            del module.__dict__["forward"]
            del module.__dict__[_ORIGINAL]
            module.__dict__.pop(_TRITON_FLAG, None)
            module.__dict__.pop(_KEEP_FLAG, None)
            n += 1
    return n


def fused_layer_count(model) -> int:
    return sum(1 for m in model.modules() if _ORIGINAL in m.__dict__)
