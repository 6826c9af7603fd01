"""What this machine will actually do for stage 04: device, dtype, attention, 4-bit, memory mode, optimiser, Liger,
packing and fused LoRA, decided once from the config and the card's properties, each choice with its reason."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..kernels.attention import VARLEN
from .config import (
    AUTO,
    FAST_MIN_GPU_GIB,
    FAST_MIN_GPU_GIB_FUSED_DROPOUT,
    FUSE_LORA_MIN_HIDDEN,
    KEEP_BASE_WEIGHT_MIN_GPU_GIB,
    MEMORY_MODES,
    FinetuneConfig,
)

LIGER_REQUIREMENT = "liger-kernel==0.8.5"
# Packed micro-batches change shape every step: without expandable segments the caching allocator held 52.2 GiB
# for a 41.4 GiB peak (fast mode, H100); with them 42.0. Read when CUDA initialises; a value already set wins.
ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"
ALLOC_CONF = "expandable_segments:True"


@dataclass
class Runtime:
    """What this machine will actually do, decided once and printed."""

    device: str
    dtype: str
    attn_implementation: str
    load_in_4bit: bool
    optim: str
    bf16: bool
    fp16: bool
    packing: bool
    padding_free: bool
    world_size: int
    gradient_checkpointing: bool = False
    use_liger_kernel: bool = False
    upcast_non_quantized: bool = False
    fuse_lora: bool | str = False    # "auto" until the model is loaded (resolve_fuse_lora decides by its width)
    fuse_reason: str = ""
    keep_base_weight: bool = False
    offload_checkpoints: bool = False
    memory_mode: str = "lean"
    memory_reason: str = ""          # why memory_mode, gradient_checkpointing and optim are what they are
    notes: list = field(default_factory=list)
    fsdp: bool = False               # launched by accelerate with FSDP (nbutils/finetune/fsdp.py)

    def describe(self) -> str:
        lines = [f"device={self.device}, dtype={self.dtype}, attention={self.attn_implementation}, "
                 f"4-bit={self.load_in_4bit}, optim={self.optim}, packing={self.packing} "
                 f"(padding-free={self.padding_free}), liger={self.use_liger_kernel}, fused LoRA={self.fuse_lora}, "
                 f"processes={self.world_size}{' (FSDP)' if self.fsdp else ''}"]
        if self.memory_reason:
            lines.append(f"  memory: {self.memory_reason}")
        lines.append(f"  fused LoRA: {self.fuse_reason or 'decided by the model width once it is loaded (auto)'}")
        if self.load_in_4bit:
            lines.append("  non-quantised weights (embeddings, norms, lm_head): " +
                         ("upcast to fp32 (upcast_non_quantized=True)" if self.upcast_non_quantized
                          else f"kept in {self.dtype} (upcast_non_quantized=False)"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def prefer_expandable_segments() -> str | None:
    """Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before CUDA initialises, unless the user set it; returns
    a note when CUDA was initialised too early for it to apply."""
    import torch

    if ALLOC_CONF_ENV in os.environ or not torch.cuda.is_available():
        return None
    if torch.cuda.is_initialized():
        return (f"CUDA was initialised before stage 04 could set {ALLOC_CONF_ENV}={ALLOC_CONF}: packed batches may "
                "reserve ~10 GiB more (restart the kernel and run this notebook first, or set it yourself)")
    os.environ[ALLOC_CONF_ENV] = ALLOC_CONF
    return None


def packing_is_isolated(attn_implementation: str) -> bool:
    """True when packed samples cannot attend to each other with this attention: flash-attn varlen kernels use
    the per-sample position_ids; SDPA/eager get a block-diagonal mask from transformers' packed-sequence
    detection (masking_utils.find_packed_sequence_indices) when no attention_mask is passed."""
    if attn_implementation.startswith("flash_attention") or attn_implementation == VARLEN:
        return True  # sdpa_varlen: the varlen kernel per sample, or SDPA with a block-diagonal mask
    if attn_implementation in ("sdpa", "eager"):
        try:
            from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def gpu_memory_gib() -> float:
    """Total memory of this process's GPU in GiB."""
    import torch

    rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.cuda.get_device_properties(rank if rank < torch.cuda.device_count() else 0).total_memory / 2**30


def liger_available() -> bool:
    """True when liger_kernel (optional GPU extra) imports."""
    from ..models import module_imports

    return module_imports("liger_kernel")


# ------------------------------------------------------------------------------------------------ memory
def fast_min_gpu_gib(cfg: FinetuneConfig) -> tuple[float, str]:
    """The GPU memory from which memory_mode="auto" picks "fast", and why that much."""
    from ..models import module_imports

    if not cfg.lora_dropout:
        return FAST_MIN_GPU_GIB_FUSED_DROPOUT, "no LoRA dropout"
    if cfg.fuse_lora and module_imports("triton"):
        return FAST_MIN_GPU_GIB_FUSED_DROPOUT, "LoRA dropout in Triton kernels"
    return FAST_MIN_GPU_GIB, "PEFT's LoRA dropout"


def resolve_memory_mode(memory_mode: str, device: str, min_gib: float = FAST_MIN_GPU_GIB,
                        because: str = "") -> tuple[str, str]:
    """("fast" | "lean", why): as set, or on CUDA by the GPU's total memory; CPU: lean (as before the modes)."""
    if memory_mode in MEMORY_MODES:
        return memory_mode, "set"
    if device != "cuda":
        return "lean", "auto: no CUDA GPU"
    gib = gpu_memory_gib()
    sign = ">=" if gib >= min_gib else "<"
    return ("fast" if gib >= min_gib else "lean"), (f"auto: GPU has {gib:.1f} GiB {sign} {min_gib:g}"
                                                     + (f" ({because})" if because else ""))


def resolve_memory_knobs(cfg: FinetuneConfig, device: str) -> tuple[str, bool, str, str]:
    """memory_mode, gradient_checkpointing, optim (before the CPU fallback) and the line that says why."""
    mode, why = resolve_memory_mode(cfg.memory_mode, device, *fast_min_gpu_gib(cfg))
    preset = MEMORY_MODES[mode]
    gc = preset["gradient_checkpointing"] if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    optim = preset["optim"] if cfg.optim is None else cfg.optim
    src_gc = "from memory_mode" if cfg.gradient_checkpointing is None else "set"
    src_opt = "from memory_mode" if cfg.optim is None else "set"
    line = (f"memory_mode={mode} ({why}): gradient_checkpointing={gc} ({src_gc}), optim={optim} ({src_opt}), "
            f"batch {cfg.per_device_train_batch_size} x accum {cfg.gradient_accumulation_steps}")
    return mode, gc, optim, line


def resolve_offload_checkpoints(cfg: FinetuneConfig, device: str, gradient_checkpointing: bool) -> tuple[bool, str]:
    """offload_checkpoints for this machine, and the words that say why ("" when checkpointing is off)."""
    if not gradient_checkpointing:
        return False, ""
    if cfg.offload_checkpoints is not None:
        return cfg.offload_checkpoints, f"offload_checkpoints={cfg.offload_checkpoints} (set)"
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    on = device == "cuda" and single
    why = "CUDA, one process" if on else ("not tried under DDP" if device == "cuda" else "no CUDA")
    return on, f"offload_checkpoints={on} (auto: {why})"


def resolve_keep_base_weight(cfg: FinetuneConfig, device: str, load_in_4bit: bool,
                             gradient_checkpointing: bool) -> tuple[bool, str]:
    """keep_base_weight for this machine, and the words that say why."""
    if not (device == "cuda" and load_in_4bit and cfg.fuse_lora):
        return False, ""
    if cfg.keep_base_weight is not None:
        return cfg.keep_base_weight, f"keep_base_weight={cfg.keep_base_weight} (set)"
    if gradient_checkpointing:
        return False, "keep_base_weight=False (auto: gradient checkpointing)"
    gib = gpu_memory_gib()
    on = gib >= KEEP_BASE_WEIGHT_MIN_GPU_GIB
    return on, (f"keep_base_weight={on} (auto: GPU has {gib:.1f} GiB {'>=' if on else '<'} "
                f"{KEEP_BASE_WEIGHT_MIN_GPU_GIB:g})")


# ------------------------------------------------------------------------------------------------ kernels
def model_hidden_size(model) -> int | None:
    """The width of a (PEFT-wrapped) causal LM: its config's hidden_size, or None when it has none."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    return int(size) if isinstance(size, int) else None


def resolve_fuse_lora(fuse_lora: bool | str, hidden_size: int | None) -> tuple[bool, str]:
    """fuse_lora for this model, and the words that say why: as set, or (auto) by the model's width."""
    if fuse_lora != AUTO:
        return bool(fuse_lora), f"fuse_lora={bool(fuse_lora)} (set)"
    if hidden_size is None:
        return True, "fuse_lora=True (auto: the model's hidden_size is unknown)"
    on = hidden_size >= FUSE_LORA_MIN_HIDDEN
    return on, (f"fuse_lora={on} (auto: hidden_size {hidden_size} {'>=' if on else '<'} {FUSE_LORA_MIN_HIDDEN}"
                + ("" if on else ": PEFT's own LoRA layers, the fused path not measured faster this narrow") + ")")


def resolve_liger(cfg: FinetuneConfig, device: str, notes: list) -> bool:
    """use_liger_kernel: as set (CUDA only), or on CUDA when liger_kernel imports."""
    if cfg.use_liger_kernel is None:
        on = device == "cuda" and liger_available()
        if device == "cuda" and not on:
            notes.append(f"liger-kernel is not installed: pip install {LIGER_REQUIREMENT} (optional GPU extra) for "
                         "fused RMSNorm/SwiGLU/RoPE kernels (+21 % tokens/s, -11 GiB measured on an H100)")
        return on
    if cfg.use_liger_kernel and device != "cuda":
        notes.append("use_liger_kernel needs CUDA (Triton kernels): off")
        return False
    if cfg.use_liger_kernel and not liger_available():
        raise ValueError(f"use_liger_kernel=True but liger_kernel does not import: pip install {LIGER_REQUIREMENT} "
                         "(GPU only), or leave use_liger_kernel unset")
    return cfg.use_liger_kernel


def resolve_attention(cfg: FinetuneConfig, device: str, notes: list) -> str:
    """attn_implementation as set, else flash-attn, else (packing on CUDA) sdpa_varlen, else SDPA."""
    import torch

    from ..models import pick_attn_implementation

    attn = cfg.attn_implementation or pick_attn_implementation(device, allow_varlen=cfg.packing is not False)
    if device == "cuda" and attn in ("sdpa", VARLEN) and torch.cuda.get_device_capability()[0] >= 8:
        notes.append("flash-attn is not installed: packed rows use PyTorch's flash varlen kernel (sdpa_varlen), "
                     "padded batches SDPA" if attn == VARLEN else
                     "flash-attn is not installed: using PyTorch SDPA (pip install flash-attn for speed)")
    return attn


def resolve_packing(cfg: FinetuneConfig, attn: str, device: str, notes: list) -> tuple[bool, bool]:
    """(packing, padding_free): packing only where samples stay apart; a strategy without boundaries is refused."""
    if cfg.packing == "auto":
        packing = attn.startswith("flash_attention") or attn == VARLEN
        if not packing and device == "cuda":
            notes.append("packing off: without flash-attn or PyTorch's varlen kernel, packed rows need an (L x L) "
                         "block mask under SDPA (correct but slower); packing=True forces it")
    else:
        packing = cfg.packing
    if packing and attn in ("sdpa", "eager") and device == "cuda":
        notes.append("packing under SDPA: samples are kept apart by a block-diagonal mask (correct; flash-attn "
                     "or sdpa_varlen is faster)")
    if packing and not packing_is_isolated(attn):
        packing = False
        notes.append(f"packing refused: attention {attn!r} cannot keep packed samples apart; training unpacked")
    padding_free = packing and cfg.packing_strategy in ("bfd", "bfd_split")
    if packing and not padding_free:
        raise ValueError(f"packing_strategy={cfg.packing_strategy!r} packs without sample boundaries "
                         "(cross-sample attention); use 'bfd' or 'bfd_split'")
    return packing, padding_free


# ------------------------------------------------------------------------------------------------ all of it
def resolve_runtime(cfg: FinetuneConfig, device: str | None = None) -> Runtime:
    """Device, dtype, attention, quantisation, memory mode, optimiser, Liger and packing for this machine, with
    the reasons. A T4 (no bf16, 16 GB) gets fp16 and the lean memory mode from its own properties."""
    import torch

    from ..models import pick_device, pick_dtype

    notes = [n for n in (prefer_expandable_segments(),) if n]
    device = device or pick_device()
    dtype = pick_dtype(device)
    attn = resolve_attention(cfg, device, notes)
    load_in_4bit = cfg.load_in_4bit
    if load_in_4bit and device != "cuda":
        load_in_4bit = False
        notes.append("no CUDA GPU: plain LoRA without 4-bit (bitsandbytes 4-bit on CPU can train without "
                     "gradients)")
    memory_mode, gradient_checkpointing, optim_wanted, memory_reason = resolve_memory_knobs(cfg, device)
    optim = optim_wanted
    if device != "cuda" and ("8bit" in optim or "paged" in optim):
        optim = "adamw_torch"
        notes.append(f"optim {optim_wanted} needs CUDA: using adamw_torch")
    use_liger = resolve_liger(cfg, device, notes)
    keep_base_weight, keep_why = resolve_keep_base_weight(cfg, device, load_in_4bit, gradient_checkpointing)
    if keep_why:
        memory_reason += f", {keep_why}"
    offload, offload_why = resolve_offload_checkpoints(cfg, device, gradient_checkpointing)
    if offload_why:
        memory_reason += f", {offload_why}"
    bf16 = device == "cuda" and dtype == torch.bfloat16
    fp16 = device == "cuda" and dtype == torch.float16
    if fp16:
        notes.append("this GPU has no bf16: fp16 mixed precision, LoRA weights kept in fp32")
    packing, padding_free = resolve_packing(cfg, attn, device, notes)
    rt = Runtime(device=device, dtype=str(dtype).replace("torch.", ""), attn_implementation=attn,
                 load_in_4bit=load_in_4bit, optim=optim, bf16=bf16, fp16=fp16, packing=packing,
                 padding_free=padding_free, world_size=int(os.environ.get("WORLD_SIZE", "1")),
                 gradient_checkpointing=gradient_checkpointing, use_liger_kernel=use_liger,
                 upcast_non_quantized=cfg.upcast_non_quantized and load_in_4bit, fuse_lora=cfg.fuse_lora,
                 keep_base_weight=keep_base_weight, offload_checkpoints=offload, memory_mode=memory_mode,
                 memory_reason=memory_reason,
                 notes=notes)
    from .fsdp import adapt_runtime, fsdp_active

    return adapt_runtime(rt, cfg) if fsdp_active() else rt
