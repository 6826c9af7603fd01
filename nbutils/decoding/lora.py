"""Take PEFT's LoRA layers out of the decode loop.

`DecodeWeights(peft_model)` swaps every LoRA-wrapped projection for its base layer, so the decoder runs a plain
Hugging Face model (no extra A/B matmuls and adds per projection per step, nothing PEFT-specific for torch.compile
to trace). `use_adapter(True)` then adds the adapter's delta (B·A·scaling, summed in float32, rounded once) into
the base weights in place, `use_adapter(False)` copies the stashed original weights back bit for bit (the stash
waits on the GPU when there is room for it, else in CPU memory). In-place
keeps every parameter at its address, so one compiled CUDA graph serves both the base and the tuned pass.

A 4-bit (bitsandbytes) base is handled by a dequantized bf16 copy of each adapted projection, made once: at batch
> 1 bitsandbytes itself dequantizes the weight to the compute dtype and runs a plain matmul, so the base pass
computes the same products; the adapter is merged into the copy (merging into the 4-bit weight would re-quantize
it and change the model). The copy costs the adapted projections' bf16 size on the GPU (for Llama-3-8B about 13 GiB),
so the engine takes this route only when that fits in free memory, and otherwise keeps the unmerged plain path.
On exit everything is put back: the PeftModel is as it was before.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def lora_layers(model) -> list[tuple[object, str, object]]:
    """(parent module, attribute name, LoraLayer) for every LoRA-wrapped module of `model`."""
    from peft.tuners.lora import LoraLayer

    found = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or not hasattr(module, "base_layer"):
            continue
        parent_name, _, attr = name.rpartition(".")
        found.append((model.get_submodule(parent_name) if parent_name else model, attr, module))
    return found


def is_4bit_linear(module) -> bool:
    return type(module).__name__ == "Linear4bit" and hasattr(getattr(module, "weight", None), "quant_state")


def dequantized_linear(module, dtype):
    """A plain nn.Linear holding the dequantized weight (and bias) of a bitsandbytes Linear4bit."""
    import bitsandbytes.functional as bnbf
    import torch

    w = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None, device=w.device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if module.bias is not None:
            lin.bias.copy_(module.bias.to(dtype))
    return lin.requires_grad_(False)


def adapted_bytes(model, dtype_bytes: int = 2) -> int:
    """Bytes of the adapted projections' weights at `dtype_bytes` per element (what a dequantized copy or a stash
    of the originals costs)."""
    total = 0
    for _, _, layer in lora_layers(model):
        base = layer.get_base_layer()
        total += int(base.in_features) * int(base.out_features) * dtype_bytes
    return total


@dataclass
class DecodeWeights:
    """Context manager: the model with LoRA layers swapped for (possibly merged) base layers; see the module doc."""

    model: object
    stash_device: str | None = None      # where the original weights wait while merged (None: the weight's device)
    merged: bool = False
    _swaps: list = field(default_factory=list)
    _stash: dict = field(default_factory=dict)

    def __enter__(self) -> DecodeWeights:
        import torch

        for parent, attr, layer in lora_layers(self.model):
            base = layer.get_base_layer()
            if is_4bit_linear(base):
                dtype = getattr(base, "compute_dtype", None) or torch.bfloat16
                base = dequantized_linear(base, dtype)
            self._swaps.append((parent, attr, layer, base))
            setattr(parent, attr, base)
        # start as the PeftModel stands: adapter on unless its layers are disabled (inside `disable_adapter()`)
        self.use_adapter(any(not layer.disable_adapters for _, _, layer, _ in self._swaps))
        return self

    def __exit__(self, *exc) -> None:
        self.use_adapter(False)
        for parent, attr, layer, _ in self._swaps:
            setattr(parent, attr, layer)
        self._swaps.clear()
        self._stash.clear()

    @property
    def n_layers(self) -> int:
        return len(self._swaps)

    @property
    def dequantized(self) -> bool:
        return any(base is not layer.get_base_layer() for _, _, layer, base in self._swaps)

    def use_adapter(self, enabled: bool) -> None:
        """Merge the active adapter(s) into the swapped-in weights (enabled) or restore the originals exactly."""
        import torch

        if enabled == self.merged:
            return
        with torch.no_grad():
            for i, (_, _, layer, base) in enumerate(self._swaps):
                w = base.weight
                original = layer.get_base_layer()
                copy = base is not original    # a dequantized copy: its original is the 4-bit weight itself
                if enabled:
                    if not copy:
                        self._stash[i] = w.detach().to(self.stash_device or w.device, copy=True)
                    delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters
                                if a in layer.lora_A)
                    w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
                elif copy:
                    w.copy_(dequantized_linear(original, w.dtype).weight)
                else:
                    w.copy_(self._stash.pop(i).to(w.device))
        self.merged = enabled
