"""Stage 04: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, correct by default.

The original project's knobs are all kept as parameters (4-bit nf4 double-quant, LoRA r=64 alpha=16 dropout 0.1
on the seven projections, batch 4 x accum 4, gradient checkpointing, paged_adamw_8bit, lr 2e-4 linear, warmup 5,
max_grad_norm 0.3, 3 epochs, 2048 tokens, Alpaca template). On a GPU the speed knobs default to the measured fast
recipe (benchmarks/RESULTS.md): no fp32 copy of the non-quantised weights, padding-free packing with PyTorch's flash
varlen kernel when flash-attn is absent (nbutils.attention), Liger kernels when installed, and memory_mode "fast"
(no checkpointing, fused AdamW) on >= 47 GiB (70 GiB without the Triton LoRA dropout) or "lean" (checkpointing,
paged 8-bit AdamW) below; LoRA layers fused (nbutils.fused_lora: scale and sum in one GEMM, dropout inside Triton
kernels on CUDA, and on >= 70 GiB in fast mode the dequantised 4-bit weights kept for the backward); TRL's trainer
without its per-micro-batch GPU read-backs (nbutils.trainer). The original
recipe exactly: memory_mode="lean", use_liger_kernel=False, upcast_non_quantized=True, attn_implementation="sdpa",
packing=False, fuse_lora=False. Its defaults are fixed:

- the loss covers the response only (prompt/completion rows: TRL masks the prompt with -100);
- EOS ends every completion and stays in the labels, and the pad token is a different token where the tokenizer
  has one, so the model learns to stop;
- packing never lets samples attend to each other: it is padding-free (position_ids restart per sample, which
  flash-attn's and PyTorch's varlen kernels and transformers' packed-sequence masks for SDPA/eager honour) or
  refused;
- truncation is counted and reported; eval loss on the test split during training; checkpoints every N steps and
  automatic resume (same step, same data order); a non-finite loss stops the run with a clear error; an
  out-of-memory error names the knobs to turn.

Outputs under data_dir/models/: adapter/ (PEFT adapter + tokenizer + train_log.json + loss.png), checkpoints/,
optionally merged/. The same code runs under `accelerate launch -m nbutils.finetune ...` (DDP on several GPUs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..kernels.attention import VARLEN
from ..config import StageConfig
from ..io import read_json, sha256_text, write_json
from ..templates import ALPACA, CHAT, TEMPLATES, build_prompt, chat_messages

# Packed micro-batches change shape every step: without expandable segments the caching allocator held 52.2 GiB
# for a 41.4 GiB peak (fast mode, H100); with them 42.0. Read at CUDA's first allocation; a value already set wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Tokens tried as a pad token distinct from EOS, in order (Llama 3.1 ships a dedicated one; Llama 3 has 250 unused
# reserved tokens; most other families have <pad>/[PAD]/<|endoftext|>). None of them resizes the embeddings.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|pad|>", "<pad>", "[PAD]",
                  "<|endoftext|>", "<unk>")
RUN_CONFIG_FILE = "run_config.json"
TRAIN_LOG = "train_log.json"
LOSS_PNG = "loss.png"
# Fields that do not change what is trained: a checkpoint made under other values can be resumed.
OPERATIONAL_FIELDS = {"profile", "data_dir", "dataset_dir", "output_dir", "checkpoint_dir", "merged_dir", "resume",
                      "merge", "save_steps", "save_total_limit", "logging_steps", "eval_steps", "max_steps",
                      "num_train_epochs", "multi_gpu", "num_processes", "per_device_eval_batch_size",
                      "memory_mode", "fuse_lora", "keep_base_weight"}  # memory_mode only picks gradient_checkpointing/optim, fingerprinted as resolved
# memory_mode presets for the fields left at None (an injected value or a profile's wins). Measured on an H100 80GB,
# random-weight Llama-3-8B nf4, 4 x 4 x 2048 tokens (benchmarks/RESULTS.md, run 13): fast 14,634 tok/s at 54.3 GiB
# peak with keep_base_weight, 14,412 at 41.3 GiB without; lean 9,575 tok/s at 9.4 GiB (1.33-1.37x over runs 11-13);
# the original recipe, bf16-loaded: 7,195 tok/s at 10.5 GiB.
MEMORY_MODES = {"fast": {"gradient_checkpointing": False, "optim": "adamw_torch_fused"},
                "lean": {"gradient_checkpointing": True, "optim": "paged_adamw_8bit"}}
# memory_mode="auto" picks "fast" on a GPU with at least this much memory (fast peaks, measured as above:
# 58.9 GiB with PEFT's LoRA dropout, which keeps a dropped copy of every projection's input; 41.4 GiB with the
# dropout inside nbutils.fused_lora_triton's kernels or with no LoRA dropout)
FAST_MIN_GPU_GIB = 70.0
FAST_MIN_GPU_GIB_FUSED_DROPOUT = 47.0
# keep_base_weight=None keeps each dequantised 4-bit base weight from the forward to the backward (no second
# dequantisation) in fast mode on a GPU with at least this much: +13 GiB for Llama-3-8B (41.3 -> 54.3 GiB peak),
# so not on 48 GB cards, where fast mode fits only without it.
KEEP_BASE_WEIGHT_MIN_GPU_GIB = 70.0
LIGER_REQUIREMENT = "liger-kernel==0.8.5"


@dataclass
class FinetuneConfig(StageConfig):
    """Every knob of stage 04. `None` paths default under data_dir (see PIPELINE.md)."""

    PROFILE_DEFAULTS: ClassVar[dict] = {
        # ~2 minutes on 2 CPU cores: SmolLM2-135M, plain LoRA r=16 on the same 7 projections, 384 tokens.
        "demo": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "load_in_4bit": False, "lora_r": 16,
                 "lora_alpha": 32, "lora_dropout": 0.05, "max_length": 384, "per_device_train_batch_size": 2,
                 "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "learning_rate": 1e-3,
                 "max_steps": 16, "eval_steps": 8, "save_steps": 8, "logging_steps": 2, "max_eval_samples": 8,
                 "packing": False},
        "full": {"base_model": "meta-llama/Meta-Llama-3-8B", "load_in_4bit": True},
    }
    PATH_FIELDS: ClassVar[dict] = {"dataset_dir": "dataset", "output_dir": "adapter"}

    base_model: str = "meta-llama/Meta-Llama-3-8B"   # hub id (HF_TOKEN from env) or local folder
    load_in_4bit: bool = True                       # QLoRA nf4 double-quant (CUDA only; CPU trains plain LoRA)
    template: str = ALPACA                          # "alpaca" (the original's) or "chat" (the model's template)
    # LoRA
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: list = field(default_factory=lambda: list(LORA_TARGETS))
    # optimisation
    num_train_epochs: float = 3.0
    max_steps: int = -1                             # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    per_device_eval_batch_size: int = 8
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 5
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    optim: str | None = None                        # None: from memory_mode (fast: adamw_torch_fused, lean:
    #                                                 paged_adamw_8bit); CPU falls back to adamw_torch
    gradient_checkpointing: bool | None = None      # None: from memory_mode (fast: off, lean: on)
    memory_mode: str = "auto"                       # "fast" | "lean" | "auto" (CUDA: fast on >= 47 GiB, 70 GiB
    #                                                 without the Triton LoRA dropout, else lean;
    #                                                 CPU: lean); fills only gradient_checkpointing/optim left None
    use_liger_kernel: bool | None = None            # Liger kernels; None: on with CUDA when liger_kernel imports
    fuse_lora: bool = True                          # LoRA scale + sum folded into one GEMM (nbutils.fused_lora;
    #                                                 same math, fewer passes over activations); False: PEFT's own
    keep_base_weight: bool | None = None            # fused LoRA + Triton dropout + 4-bit: keep each dequantised
    #                                                 base weight for the backward (+13 GiB on Llama-3-8B without
    #                                                 checkpointing); None: on in fast mode with >= 70 GiB GPU
    upcast_non_quantized: bool = False              # 4-bit: fp32 copy of embeddings/norms/lm_head (peft's
    #                                                 prepare_model_for_kbit_training; the original's, slower, +5 GiB)
    seed: int = 42
    # sequences
    max_length: int = 2048
    packing: Any = "auto"                           # padding-free packing only (no cross-sample attention);
    #                                                 "auto": on with flash-attn or sdpa_varlen, off otherwise
    packing_strategy: str = "bfd"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # evaluation / checkpoints / logs
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int = 3
    logging_steps: int = 5
    resume: Any = "auto"                            # "auto": resume a compatible checkpoint; True: must; False: fresh
    merge: bool = False                             # also write a merged full model to merged_dir
    attn_implementation: str | None = None          # None: flash_attention_2 when usable, else on CUDA sdpa_varlen
    #                                                 (PyTorch's flash varlen kernel) when packing, else sdpa
    multi_gpu: Any = "auto"                         # "auto": >1 visible GPU -> launch with accelerate (DDP)
    num_processes: int | None = None                # GPUs for accelerate launch (None: all visible)
    dataset_dir: str | None = None
    output_dir: str | None = None                   # the adapter folder (models/adapter)
    checkpoint_dir: str | None = None               # None: models/checkpoints
    merged_dir: str | None = None                   # None: models/merged

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoint_dir is None:
            self.checkpoint_dir = str(self.paths.models / "checkpoints")
        if self.merged_dir is None:
            self.merged_dir = str(self.paths.models / "merged")
        if self.template not in TEMPLATES:
            raise ValueError(f"template={self.template!r}: expected one of {', '.join(TEMPLATES)}")
        if isinstance(self.resume, str) and self.resume not in ("auto", "true", "false"):
            raise ValueError(f"resume={self.resume!r}: expected 'auto', True or False")
        if self.resume in ("true", "false"):
            self.resume = self.resume == "true"
        if self.max_length is not None and self.max_length < 16:
            raise ValueError(f"max_length={self.max_length} is too small to hold a prompt and an answer")
        if self.memory_mode not in ("auto", *MEMORY_MODES):
            raise ValueError(f"memory_mode={self.memory_mode!r}: expected 'auto', 'fast' or 'lean'")
        for name in ("gradient_checkpointing", "use_liger_kernel", "upcast_non_quantized", "fuse_lora",
                     "keep_base_weight"):
            value = getattr(self, name)
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"{name}={value!r}: expected True or False")
                setattr(self, name, value.lower() == "true")


# ------------------------------------------------------------------------------------------------ runtime choices
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
    fuse_lora: bool = False
    keep_base_weight: bool = False
    memory_mode: str = "lean"
    memory_reason: str = ""          # why memory_mode, gradient_checkpointing and optim are what they are
    notes: list = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"device={self.device}, dtype={self.dtype}, attention={self.attn_implementation}, "
                 f"4-bit={self.load_in_4bit}, optim={self.optim}, packing={self.packing} "
                 f"(padding-free={self.padding_free}), liger={self.use_liger_kernel}, fused LoRA={self.fuse_lora}, "
                 f"processes={self.world_size}"]
        if self.memory_reason:
            lines.append(f"  memory: {self.memory_reason}")
        if self.load_in_4bit:
            lines.append("  non-quantised weights (embeddings, norms, lm_head): " +
                         ("upcast to fp32 (upcast_non_quantized=True)" if self.upcast_non_quantized
                          else f"kept in {self.dtype} (upcast_non_quantized=False)"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def packing_is_isolated(attn_implementation: str) -> bool:
    """True when packed samples cannot attend to each other with this attention: flash-attn varlen kernels use
    the per-sample position_ids; SDPA/eager get a block-diagonal mask from transformers' packed-sequence
    detection (masking_utils.find_packed_sequence_indices) when no attention_mask is passed."""
    if attn_implementation.startswith("flash_attention") or attn_implementation == VARLEN:
        return True  # sdpa_varlen: the varlen kernel per sample, or SDPA with a block-diagonal mask (nbutils.attention)
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
    return ("fast" if gib >= min_gib else "lean"), (f"auto: GPU has {gib:.1f} GiB {sign} {min_gib:.0f}"
                                                     + (f" ({because})" if because else ""))


def resolve_memory_knobs(cfg: FinetuneConfig, device: str) -> tuple[str, bool, str, str]:
    """memory_mode, gradient_checkpointing, optim (before the CPU fallback) and the line that says why."""
    mode, why = resolve_memory_mode(cfg.memory_mode, device, *fast_min_gpu_gib(cfg))
    preset = MEMORY_MODES[mode]
    gc = preset["gradient_checkpointing"] if cfg.gradient_checkpointing is None else bool(cfg.gradient_checkpointing)
    optim = preset["optim"] if cfg.optim is None else cfg.optim
    src_gc = "from memory_mode" if cfg.gradient_checkpointing is None else "set"
    src_opt = "from memory_mode" if cfg.optim is None else "set"
    line = (f"memory_mode={mode} ({why}): gradient_checkpointing={gc} ({src_gc}), optim={optim} ({src_opt}), "
            f"batch {cfg.per_device_train_batch_size} x accum {cfg.gradient_accumulation_steps}")
    return mode, gc, optim, line


def resolve_keep_base_weight(cfg: FinetuneConfig, device: str, load_in_4bit: bool,
                             gradient_checkpointing: bool) -> tuple[bool, str]:
    """keep_base_weight for this machine, and the words that say why."""
    if not (device == "cuda" and load_in_4bit and cfg.fuse_lora):
        return False, ""
    if cfg.keep_base_weight is not None:
        return bool(cfg.keep_base_weight), f"keep_base_weight={bool(cfg.keep_base_weight)} (set)"
    if gradient_checkpointing:
        return False, "keep_base_weight=False (auto: gradient checkpointing)"
    gib = gpu_memory_gib()
    on = gib >= KEEP_BASE_WEIGHT_MIN_GPU_GIB
    return on, (f"keep_base_weight={on} (auto: GPU has {gib:.1f} GiB {'>=' if on else '<'} "
                f"{KEEP_BASE_WEIGHT_MIN_GPU_GIB:.0f})")


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
    return bool(cfg.use_liger_kernel)


def packing_requested(cfg: FinetuneConfig) -> bool:
    return cfg.packing == "auto" or cfg.packing is True or cfg.packing == "true"


def resolve_runtime(cfg: FinetuneConfig, device: str | None = None) -> Runtime:
    """Device, dtype, attention, quantisation, memory mode, optimiser, Liger and packing for this machine, with
    the reasons."""
    import torch

    from ..models import pick_attn_implementation, pick_device, pick_dtype

    device = device or pick_device()
    dtype = pick_dtype(device)
    notes = []
    attn = cfg.attn_implementation or pick_attn_implementation(device, allow_varlen=packing_requested(cfg))
    if device == "cuda" and attn in ("sdpa", VARLEN) and torch.cuda.get_device_capability()[0] >= 8:
        notes.append("flash-attn is not installed: packed rows use PyTorch's flash varlen kernel (sdpa_varlen), "
                     "padded batches SDPA" if attn == VARLEN else
                     "flash-attn is not installed: using PyTorch SDPA (pip install flash-attn for speed)")
    load_in_4bit = bool(cfg.load_in_4bit)
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
    bf16 = device == "cuda" and dtype == torch.bfloat16
    fp16 = device == "cuda" and dtype == torch.float16
    if fp16:
        notes.append("this GPU has no bf16: fp16 mixed precision, LoRA weights kept in fp32")
    if cfg.packing == "auto":
        packing = attn.startswith("flash_attention") or attn == VARLEN
        if not packing and device == "cuda":
            notes.append("packing off: without flash-attn or PyTorch's varlen kernel, packed rows need an (L x L) "
                         "block mask under SDPA (correct but slower); packing=True forces it")
    else:
        packing = cfg.packing is True or cfg.packing == "true"
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
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return Runtime(device=device, dtype=str(dtype).replace("torch.", ""), attn_implementation=attn,
                   load_in_4bit=load_in_4bit, optim=optim, bf16=bf16, fp16=fp16, packing=packing,
                   padding_free=padding_free, world_size=world_size, gradient_checkpointing=gradient_checkpointing,
                   use_liger_kernel=use_liger, upcast_non_quantized=bool(cfg.upcast_non_quantized) and load_in_4bit,
                   fuse_lora=bool(cfg.fuse_lora), keep_base_weight=keep_base_weight, memory_mode=memory_mode,
                   memory_reason=memory_reason, notes=notes)


# ------------------------------------------------------------------------------------------------ data
def choose_pad_token(tokenizer) -> str:
    """Set a pad token distinct from EOS when the vocabulary has one (no embedding resize); returns what it did.
    Labels never depend on it (TRL pads labels with -100), but a distinct pad keeps EOS meaningful everywhere."""
    eos_id = tokenizer.eos_token_id
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != eos_id:
        return f"pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) already distinct from EOS"
    vocab = tokenizer.get_vocab()
    for tok in PAD_CANDIDATES:
        if tok in vocab and vocab[tok] != eos_id and vocab[tok] != tokenizer.bos_token_id:
            tokenizer.pad_token = tok
            return f"pad token set to {tok!r} (id {tokenizer.pad_token_id}), distinct from EOS {tokenizer.eos_token!r}"
    tokenizer.pad_token = tokenizer.eos_token
    return (f"no spare token for padding: pad = EOS {tokenizer.eos_token!r}; EOS still trained (labels of padding "
            "are -100 by position, not by token id)")


def to_prompt_completion(ds, template: str, tokenizer=None):
    """Rows (instruction, input, output) -> TRL prompt/completion rows (loss on the completion only).
    Alpaca: plain strings, TRL appends EOS to the completion. Chat: conversational messages, the chat template
    closes the assistant turn with its end-of-turn token."""
    if template == CHAT:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template; use template='alpaca'")

        def convert(r):
            return {"prompt": chat_messages(r["instruction"], r["input"]),
                    "completion": [{"role": "assistant", "content": r["output"].strip()}]}
    else:
        def convert(r):
            return {"prompt": build_prompt(r["instruction"], r["input"], ALPACA), "completion": r["output"].strip()}
    return ds.map(convert, remove_columns=ds.column_names, desc="formatting")


def drop_empty_rows(ds, name: str):
    """Rows without an instruction or an output cannot teach anything: drop them, say which and why."""
    bad = [i for i, r in enumerate(ds) if not str(r["instruction"]).strip() or not str(r["output"]).strip()]
    for i in bad[:5]:
        print(f"  skipped {name} row {i}: empty instruction or output")
    if len(bad) > 5:
        print(f"  ... and {len(bad) - 5} more empty {name} rows")
    return ds.select([i for i in range(len(ds)) if i not in set(bad)]), len(bad)


def load_training_data(cfg: FinetuneConfig, tokenizer, verbose: bool = True):
    """Train and eval prompt/completion datasets from the frozen split, plus counts for the log."""
    from ..splits import load_split

    dd = load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, seed=cfg.seed, verbose=verbose)
    train, n_bad_train = drop_empty_rows(dd["train"], "train")
    test, n_bad_test = drop_empty_rows(dd["test"], "test")
    if len(train) == 0:
        raise ValueError(f"the train split in {cfg.dataset_dir} has no usable rows")
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples:
        test = test.select(range(min(cfg.max_eval_samples, len(test))))
    info = {"n_train": len(train), "n_eval": len(test), "skipped_empty": n_bad_train + n_bad_test}
    return (to_prompt_completion(train, cfg.template, tokenizer),
            to_prompt_completion(test, cfg.template, tokenizer) if len(test) else None, info)


def token_lengths(ds, tokenizer) -> list[tuple[int, int]]:
    """(prompt tokens, prompt+completion+EOS tokens) per row, tokenised as TRL will."""
    out = []
    for r in ds:
        if isinstance(r["prompt"], list):
            p = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
            n_p = len(tokenizer(p, add_special_tokens=False)["input_ids"])
            n_f = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        else:
            n_p = len(tokenizer(r["prompt"])["input_ids"])
            n_f = len(tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token)["input_ids"])
        out.append((n_p, n_f))
    return out


def truncation_report(ds, tokenizer, max_length: int | None, name: str = "train") -> dict:
    """How many rows exceed max_length (their answer loses its end, and EOS), and how many lose the whole answer
    (TRL drops those). Printed, and stored in train_log.json."""
    lengths = token_lengths(ds, tokenizer)
    full = [f for _, f in lengths]
    limit = max_length or max(full, default=0)
    rep = {"split": name, "rows": len(full), "max_length": max_length,
           "truncated": sum(f > limit for f in full),
           "answer_lost": sum(p >= limit for p, _ in lengths),
           "tokens_total": sum(min(f, limit) for f in full),
           "tokens_cut": sum(max(0, f - limit) for f in full),
           "longest": max(full, default=0), "mean": round(sum(full) / max(1, len(full)), 1)}
    return rep


def describe_truncation(rep: dict) -> str:
    s = (f"{rep['split']}: {rep['rows']} rows, mean {rep['mean']} / longest {rep['longest']} tokens; "
         f"{rep['truncated']} truncated at max_length={rep['max_length']} ({rep['tokens_cut']} tokens cut)")
    if rep["answer_lost"]:
        s += f", {rep['answer_lost']} dropped (the prompt alone fills max_length)"
    return s


# ------------------------------------------------------------------------------------------------ trainer pieces
class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss: continuing would only waste GPU hours."""


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StopOnNonFiniteLoss(_trainer_callback_base()):
    """Raise NonFiniteLossError as soon as a logged training or eval loss is NaN or inf."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss", "grad_norm"):
            v = (logs or {}).get(key)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                raise NonFiniteLossError(
                    f"{key} became {v} at step {state.global_step} (lr={logs.get('learning_rate')}). Training "
                    "stopped. Usual fixes: lower learning_rate, keep max_grad_norm small (0.3), use bf16 instead of "
                    "fp16 when the GPU supports it, or check the data for empty/garbled rows. The last good "
                    "checkpoint is in checkpoint_dir (resume=True continues from it).")


class TrainLogRecorder(_trainer_callback_base()):
    """Adds tokens/s (training time only, evals excluded) and peak memory to every log entry of the Trainer's
    state.log_history, which checkpoints save and resume restores, so a resumed run keeps its whole log."""

    def __init__(self):
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_tokens = time.time(), state.num_input_tokens_seen

    def on_evaluate(self, args, state, control, **kwargs):
        self._last_time = time.time()  # evaluation time is not training throughput

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.log_history or state.log_history[-1].get("step") != state.global_step:
            return
        extra = dict(peak_memory())
        if "loss" in (logs or {}) and self._last_time is not None:
            dt = time.time() - self._last_time
            dtok = state.num_input_tokens_seen - self._last_tokens
            extra["tokens_per_s"] = round(dtok / dt, 1) if dt > 0 else None
            self._last_time, self._last_tokens = time.time(), state.num_input_tokens_seen
        state.log_history[-1].update(extra)


LOG_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s",
            "num_input_tokens_seen", "peak_gpu_mem_gib", "peak_rss_gib")


def log_entries(log_history: list[dict]) -> list[dict]:
    """The per-log-step entries (train loss or eval loss) of a Trainer's log_history, with the fields we keep."""
    return [{k: e[k] for k in LOG_KEYS if k in e} for e in log_history if "loss" in e or "eval_loss" in e]


def peak_memory() -> dict:
    """Peak GPU memory allocated (GiB) on CUDA, else the process's peak resident memory (GiB)."""
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def build_lora_config(cfg: FinetuneConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def build_sft_config(cfg: FinetuneConfig, rt: Runtime, has_eval: bool):
    from trl import SFTConfig

    eval_kwargs = {"eval_strategy": "steps", "eval_steps": cfg.eval_steps, "eval_on_start": True} if has_eval \
        else {"eval_strategy": "no"}
    return SFTConfig(
        output_dir=cfg.checkpoint_dir, seed=cfg.seed, data_seed=cfg.seed,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps if cfg.max_steps else -1,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay, optim=rt.optim,
        gradient_checkpointing=rt.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if rt.gradient_checkpointing else None,
        bf16=rt.bf16, fp16=rt.fp16, use_liger_kernel=rt.use_liger_kernel,
        max_length=cfg.max_length, packing=rt.packing, packing_strategy=cfg.packing_strategy,
        padding_free=rt.padding_free, completion_only_loss=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        logging_strategy="steps", logging_steps=cfg.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must reach StopOnNonFiniteLoss, not be averaged away
        include_num_input_tokens_seen="all" if rt.padding_free else "non_padding",
        report_to="none", disable_tqdm=False, dataloader_num_workers=0,
        ddp_find_unused_parameters=False if rt.world_size > 1 else None,
        **eval_kwargs)


# ------------------------------------------------------------------------------------------------ resume
def run_fingerprint(cfg: FinetuneConfig, train_ds, rt: Runtime | None = None) -> str:
    """What a checkpoint was trained on: the training-relevant config (knobs left to memory_mode/auto as this
    machine resolved them: a checkpoint's optimizer state only resumes under the same optimizer) plus the data."""
    relevant = {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL_FIELDS}
    if rt is not None:
        relevant.update(optim=rt.optim, gradient_checkpointing=rt.gradient_checkpointing,
                        use_liger_kernel=rt.use_liger_kernel)
    # the rows' content, not datasets' _fingerprint (that one can be random across processes)
    data = sha256_text(*(json.dumps([r["prompt"], r["completion"]], sort_keys=True) for r in train_ds))
    return sha256_text(json.dumps(relevant, sort_keys=True, default=str), data)


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(checkpoint_dir)
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def decide_resume(cfg: FinetuneConfig, fingerprint: str, is_main: bool = True) -> str | None:
    """The checkpoint to resume from, or None to start fresh (clearing stale checkpoints)."""
    ckpt_dir = Path(cfg.checkpoint_dir)
    ckpt = last_checkpoint(ckpt_dir)
    saved = read_json(ckpt_dir / RUN_CONFIG_FILE) if (ckpt_dir / RUN_CONFIG_FILE).exists() else {}
    compatible = ckpt is not None and saved.get("fingerprint") == fingerprint
    if cfg.resume is True:
        if ckpt is None:
            raise FileNotFoundError(f"resume=True but {ckpt_dir} holds no checkpoint; use resume='auto' or False")
        if not compatible:
            raise ValueError(f"resume=True but {ckpt} was trained with another configuration or dataset "
                             f"(differences: {config_diff(saved.get('config', {}), cfg)}); use resume=False to "
                             "start over")
        return ckpt
    if cfg.resume == "auto" and compatible:
        return ckpt
    if ckpt is not None and is_main:
        why = "resume=False" if cfg.resume is False else \
            f"it was made with another configuration or dataset ({config_diff(saved.get('config', {}), cfg)})"
        print(f"not resuming {ckpt}: {why}; starting fresh")
    if is_main and ckpt_dir.exists():
        for old in ckpt_dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
    return None


def config_diff(saved: dict, cfg: FinetuneConfig) -> str:
    now = cfg.to_dict()
    diffs = [k for k in now if k not in OPERATIONAL_FIELDS and saved.get(k) != now[k]]
    return ", ".join(diffs) if diffs else "dataset changed"


def explain_oom(cfg: FinetuneConfig, rt: Runtime) -> str:
    tips = [f"per_device_train_batch_size={cfg.per_device_train_batch_size} -> {max(1, cfg.per_device_train_batch_size // 2)}"
            f" (raise gradient_accumulation_steps to keep the effective batch)",
            f"max_length={cfg.max_length} -> {max(256, (cfg.max_length or 2048) // 2)}"]
    if rt.memory_mode == "fast" and cfg.gradient_checkpointing is None:
        tips.append('memory_mode="lean" (gradient checkpointing + paged 8-bit AdamW: ~10 GiB instead of ~41 for '
                    "Llama-3-8B QLoRA, ~32 % slower)")
    elif not rt.gradient_checkpointing:
        tips.append("gradient_checkpointing=True (trades ~30% speed for far less activation memory)")
    if not rt.load_in_4bit and rt.device == "cuda":
        tips.append("load_in_4bit=True (QLoRA: ~4x smaller base weights)")
    if cfg.lora_dropout and not rt.fuse_lora and rt.device == "cuda":
        tips.append("fuse_lora=True (LoRA dropout inside Triton kernels: no dropped copy of each layer input kept, "
                    "-17.5 GiB on Llama-3-8B)")
    if rt.keep_base_weight:
        tips.append("keep_base_weight=False (dequantises each 4-bit weight again in the backward instead of keeping "
                    "it: -13 GiB on Llama-3-8B, ~1.5 % slower)")
    if cfg.lora_r > 16:
        tips.append(f"lora_r={cfg.lora_r} -> 16")
    return "out of GPU memory. Turn one of these knobs and rerun (training resumes from the last checkpoint): " \
        + "; ".join(tips)


class FinetuneOOMError(RuntimeError):
    """Out of memory, with the knobs to turn."""


# ------------------------------------------------------------------------------------------------ the stage
def load_base_model(cfg: FinetuneConfig, rt: Runtime):
    """The base model as this runtime wants it (4-bit or not, dtype, attention, device), untouched otherwise."""
    import torch

    from ..models import load_causal_lm

    return load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=rt.load_in_4bit, dtype=getattr(torch, rt.dtype),
                          attn_implementation=rt.attn_implementation, device=rt.device)


def set_gradient_checkpointing(model, on: bool) -> None:
    """Non-reentrant checkpointing with input grads (the first layers' LoRA weights need a graph to their input),
    or neither. Safe to call again on the same model (earlier hooks are removed)."""
    model.disable_input_require_grads()
    for hook in getattr(model, "_nbutils_input_grad_hooks", ()):
        hook.remove()
    model._nbutils_input_grad_hooks = []
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not getattr(model, "_require_grads_hooks", None):  # transformers 5 registers them with checkpointing
            model.enable_input_require_grads()
        model._nbutils_input_grad_hooks = list(model._require_grads_hooks)
    elif getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()


def freeze_for_adapter_training(model, gradient_checkpointing: bool):
    """Freeze every base weight (the LoRA adapter brings the trainable ones) and set checkpointing; dtypes stay as
    loaded (no fp32 copy of embeddings/norms/lm_head: the residual stream stays in bf16/fp16)."""
    for p in model.parameters():
        p.requires_grad_(False)
    set_gradient_checkpointing(model, gradient_checkpointing)
    return model


def prepare_model_for_training(model, cfg: FinetuneConfig, rt: Runtime):
    """Frozen base with checkpointing as resolved; with upcast_non_quantized on a 4-bit base, peft's
    prepare_model_for_kbit_training (the original recipe: fp32 non-quantised weights) instead."""
    if rt.load_in_4bit and rt.upcast_non_quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=rt.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        set_gradient_checkpointing(model, rt.gradient_checkpointing)
    else:
        freeze_for_adapter_training(model, rt.gradient_checkpointing)
    model.config.use_cache = False
    return model


def load_model_for_training(cfg: FinetuneConfig, rt: Runtime):
    return prepare_model_for_training(load_base_model(cfg, rt), cfg, rt)


def build_trainer(cfg: FinetuneConfig, rt: Runtime, model, tokenizer, train_ds, eval_ds, callbacks=()):
    import torch

    from .trainer import SyncFreeSFTTrainer

    trainer = SyncFreeSFTTrainer(model=model, args=build_sft_config(cfg, rt, eval_ds is not None),
                                 train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                                 peft_config=build_lora_config(cfg), callbacks=[StopOnNonFiniteLoss(), *callbacks])
    if rt.fuse_lora:
        from ..kernels.fused_lora import fuse_lora_layers

        fuse_lora_layers(trainer.model, keep_base_weight=rt.keep_base_weight)
    if rt.fp16:  # fp16 AMP unscales fp32 master weights only: keep the trainable LoRA weights in fp32 (T4)
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.float32)
    return trainer


def run_training(trainer, cfg: FinetuneConfig, rt: Runtime, resume_from: str | None):
    """trainer.train with the two failure modes turned into actionable errors."""
    import torch

    try:
        return trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as e:
        raise FinetuneOOMError(explain_oom(cfg, rt)) from e


def save_adapter(trainer, tokenizer, out_dir: str | Path) -> Path:
    """Write the PEFT adapter + tokenizer to a temp folder and swap it into place (never half an adapter).
    Load it with PeftModel.from_pretrained(base, out_dir) wherever the base model lives."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def merge_adapter(cfg: FinetuneConfig, rt: Runtime, adapter_dir: str | Path) -> Path:
    """Base (in 16/32-bit, never 4-bit: merging into quantised weights loses precision) + adapter -> one model."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ..models import load_causal_lm

    base = load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=False, dtype=getattr(torch, rt.dtype),
                          device=rt.device)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out = Path(cfg.merged_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def runtime_versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__, "python": sys.version.split()[0]}


def train(cfg: FinetuneConfig, extra_callbacks=(), verbose: bool = True) -> dict:
    """Fine-tune cfg.base_model on the split; returns (and writes) the training log."""
    from ..models import load_tokenizer, resolve_model_path

    t_start = time.time()
    rt = resolve_runtime(cfg)
    if rt.device == "cuda" and "LOCAL_RANK" in os.environ:
        import torch

        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    is_main = int(os.environ.get("RANK", "0")) == 0
    if verbose and is_main:
        print(rt.describe())
    tokenizer = load_tokenizer(cfg.base_model, cfg.data_dir)
    pad_note = choose_pad_token(tokenizer)
    if verbose and is_main:
        print(pad_note)
    if rt.world_size > 1:  # under accelerate launch: rank 0 makes/saves the split once, the others then load it
        from accelerate import PartialState

        with PartialState().main_process_first():
            train_ds, eval_ds, data_info = load_training_data(cfg, tokenizer, verbose=verbose and is_main)
    else:
        train_ds, eval_ds, data_info = load_training_data(cfg, tokenizer, verbose=verbose and is_main)
    trunc = [truncation_report(train_ds, tokenizer, cfg.max_length, "train")]
    if eval_ds is not None:
        trunc.append(truncation_report(eval_ds, tokenizer, cfg.max_length, "eval"))
    if verbose and is_main:
        for rep in trunc:
            print(describe_truncation(rep))
        if eval_ds is None:
            print("the test split is empty: no eval loss during training")
    fingerprint = run_fingerprint(cfg, train_ds, rt)
    resume_from = decide_resume(cfg, fingerprint, is_main)
    if verbose and is_main and resume_from:
        print(f"resuming from {resume_from}")
    t_load = time.time()
    model = load_model_for_training(cfg, rt)
    trainer = build_trainer(cfg, rt, model, tokenizer, train_ds, eval_ds,
                            callbacks=[TrainLogRecorder(), *extra_callbacks])
    load_s = time.time() - t_load
    if is_main:
        write_json(Path(cfg.checkpoint_dir) / RUN_CONFIG_FILE, {"fingerprint": fingerprint, "config": cfg.to_dict()})
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if verbose and is_main:
        print(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    if resume_from:
        trainer.args.eval_on_start = False  # the checkpoint's log already holds the eval before step 1
    t_train = time.time()
    result = run_training(trainer, cfg, rt, resume_from)
    train_s = time.time() - t_train
    log = {
        "base_model": cfg.base_model, "base_model_path": resolve_model_path(cfg.base_model, cfg.data_dir),
        "config": cfg.to_dict(), "runtime": {**dataclasses.asdict(rt), **runtime_versions()},
        "pad_token": pad_note, "data": data_info, "truncation": trunc,
        "trainable_params": trainable, "total_params": total,
        "resumed_from": resume_from, "global_step": trainer.state.global_step,
        "train_loss": result.training_loss, "train_runtime_s": round(train_s, 1), "load_s": round(load_s, 1),
        "tokens_seen": trainer.state.num_input_tokens_seen, "log": log_entries(trainer.state.log_history),
    }
    log["summary"] = summarise(log)
    if trainer.is_world_process_zero():
        out = save_adapter(trainer, tokenizer, cfg.output_dir)
        if cfg.merge:
            log["merged_dir"] = str(merge_adapter(cfg, rt, out))
        log["total_s"] = round(time.time() - t_start, 1)
        write_json(out / TRAIN_LOG, log)
        from ..plots import plt

        plt.close(plot_loss(log, out / LOSS_PNG))  # the notebook shows the saved PNG once
        if verbose:
            print(f"adapter -> {out}  ({log['total_s']} s in all)")
    return log


def summarise(log: dict) -> dict:
    evals = [e["eval_loss"] for e in log["log"] if "eval_loss" in e]
    losses = [e["loss"] for e in log["log"] if "loss" in e]
    tps = [e["tokens_per_s"] for e in log["log"] if e.get("tokens_per_s")]
    mem = [e.get("peak_gpu_mem_gib", e.get("peak_rss_gib")) for e in log["log"]]
    return {"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "eval_loss_start": evals[0] if evals else None, "eval_loss_end": evals[-1] if evals else None,
            "mean_tokens_per_s": round(sum(tps) / len(tps), 1) if tps else None,
            "peak_memory_gib": max((m for m in mem if m is not None), default=None),
            "truncated_rows": sum(r["truncated"] for r in log["truncation"]),
            "dropped_rows": sum(r["answer_lost"] for r in log["truncation"])}


def plot_loss(log: dict, path: str | Path | None = None):
    """Training and eval loss against the optimizer step."""
    from ..plots import plt, save

    tr = [(e["step"], e["loss"]) for e in log["log"] if "loss" in e]
    ev = [(e["step"], e["eval_loss"]) for e in log["log"] if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if tr:
        ax.plot(*zip(*tr), marker=".", label="train loss")
    if ev:
        ax.plot(*zip(*ev), marker="o", label="eval loss (test split)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(f"fine-tuning {Path(str(log.get('base_model', ''))).name}")
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


# ------------------------------------------------------------------------------------------------ several GPUs
def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def wants_distributed(cfg: FinetuneConfig) -> bool:
    if "LOCAL_RANK" in os.environ or cfg.multi_gpu is False or cfg.multi_gpu == "false":
        return False
    return gpu_count() > 1 and (cfg.num_processes or gpu_count()) > 1


def cli_args(cfg: FinetuneConfig) -> list[str]:
    """The config as `--name value` flags for `python -m nbutils.finetune` (only non-default values)."""
    defaults = FinetuneConfig.defaults(cfg.profile)
    args = ["--profile", cfg.profile, "--data_dir", cfg.data_dir]
    for k, v in cfg.to_dict().items():
        if k in ("profile", "data_dir", "multi_gpu", "num_processes") or v is None or v == defaults.get(k):
            continue
        if k in FinetuneConfig.PATH_FIELDS or k in ("checkpoint_dir", "merged_dir"):
            if v == getattr(FinetuneConfig(profile=cfg.profile, data_dir=cfg.data_dir), k):
                continue
        args += [f"--{k}", json.dumps(v) if isinstance(v, (list, bool)) else str(v)]
    return args


def launch_command(cfg: FinetuneConfig) -> list[str]:
    n = cfg.num_processes or gpu_count()
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "-m", "nbutils.finetune", *cli_args(cfg)]


def launch_distributed(cfg: FinetuneConfig) -> dict:
    """Run the training entry point under `accelerate launch` (DDP) and return the log it wrote."""
    from ..splits import load_split

    load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, seed=cfg.seed)  # made once here, not by every rank
    cmd = launch_command(cfg)
    print("launching:", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return read_json(Path(cfg.output_dir) / TRAIN_LOG)


def run(cfg: FinetuneConfig) -> dict:
    """The notebook's entry: one process here, or `accelerate launch` over all GPUs when there are several."""
    if wants_distributed(cfg):
        return launch_distributed(cfg)
    return train(cfg)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    p = argparse.ArgumentParser(prog="python -m nbutils.finetune",
                                description="Stage 04 fine-tuning (also under `accelerate launch -m nbutils.finetune`)")
    p.add_argument("--profile", default="demo")
    p.add_argument("--data_dir", default="data")
    for f in dataclasses.fields(FinetuneConfig):
        if f.name not in ("profile", "data_dir"):
            p.add_argument(f"--{f.name}", type=_parse_value, default=None)
    ns = vars(p.parse_args(argv))
    return FinetuneConfig.from_params(**ns)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        cfg.show()
    log = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(log["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
