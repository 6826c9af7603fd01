"""Stage 04 past one GPU: FSDP-QLoRA over the GPUs of one host, through the same `accelerate launch` entry point.

Which multi-GPU mode, and why, is decided by arithmetic (`plan_parallelism`, a pure function of the model's shape,
the GPU count and memory and the batch): DDP (every GPU a full replica, fastest) when a replica fits one card, else
FSDP (weights, LoRA weights, gradients and optimizer state sharded over the GPUs, decoder layers gathered one at a
time) when the sharded state fits, else FSDP with the shards' parameters and optimizer state offloaded to host
memory, else a clear refusal. `multi_gpu="ddp"`/`"fsdp"` forces a mode.

The recipe (transformers/PEFT/accelerate's FSDP-QLoRA; bitsandbytes' and answer.ai's fsdp_qlora):
- 4-bit weights stored in the compute dtype (`bnb_4bit_quant_storage=bf16`): FSDP only shards floating tensors;
- FSDP2 (`fully_shard`, transformers' default; FSDP1 is deprecated there) wrapping each decoder layer class
  (`TRANSFORMER_BASED_WRAP` with the model's `_no_split_modules`, e.g. LlamaDecoderLayer); FSDP2 shards per
  parameter, which is what FSDP1's `use_orig_params=True` gave (frozen 4-bit and trainable LoRA weights in one
  unit), and its `cpu_ram_efficient_loading` broadcasts rank 0's weights (FSDP1's `sync_module_states`); both flags
  are still passed (accelerate requires sync_module_states with cpu_ram_efficient_loading);
- sharded checkpoints (`SHARDED_STATE_DICT`: each rank writes its shard, torch.distributed.checkpoint) that resume
  on the same number of GPUs or another; the adapter gathered once at the end and written once by rank 0, as
  PEFT's ordinary adapter (loadable with PeftModel.from_pretrained on one GPU or the CPU);
- gradient checkpointing as the memory mode resolves it, by transformers (the RNG state is kept, so LoRA dropout's
  masks are the same in the recompute; accelerate's FSDP activation checkpointing does not keep it);
- AdamW in fp32, sharded (PEFT: paged_adamw_8bit fails to save a checkpoint under FSDP-QLoRA); no fused LoRA,
  Liger, checkpoint offload or fp32 upcast of non-quantised weights (not tried under FSDP; FSDP2 needs one dtype
  per unit); merge=True refused (merging needs the whole bf16 model in one process: merge afterwards).

Limit of the loader (transformers 5.24): with 4-bit weights every rank first loads the whole quantised model onto
its own GPU and shards it after, so the 4-bit model must fit one card once (Llama-3-70B: ~37 GiB). Training 70B on
2 x 24 GB cards (answer.ai's loader quantises layer by layer into host memory) is therefore not reached here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .config import FSDP_USABLE_GPU_FRACTION, NF4_BITS_PER_WEIGHT

GIB = 2**30
DDP, FSDP, NONE = "ddp", "fsdp", "none"
# accelerate launch flags for FSDP (besides --num_processes); `fsdp_launch_flags` adds the layer class and offload.
FSDP_FLAGS = {"--fsdp_version": "2", "--fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type": "SHARDED_STATE_DICT", "--fsdp_reshard_after_forward": "true",
              "--fsdp_cpu_ram_efficient_loading": "true", "--fsdp_sync_module_states": "true",
              "--fsdp_use_orig_params": "true", "--fsdp_activation_checkpointing": "false"}


# ------------------------------------------------------------------------------------------------ the model's shape
@dataclass(frozen=True)
class ModelShape:
    """What the memory arithmetic needs of a decoder-only model (Llama-style projections)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int = 0
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each of a layer's seven projections."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        q = self.heads * (self.head_dim or h // self.heads)
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.projection_shapes().values())

    def embedding_params(self) -> int:
        """Input embeddings plus lm_head (one matrix when tied): kept in the compute dtype, never 4-bit."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def lora_params(self, r: int, targets) -> int:
        return self.layers * sum(r * (a + b) for name, (a, b) in self.projection_shapes().items() if name in targets)


# Published shapes (config.json of meta-llama/Meta-Llama-3-8B and -70B) for the tests, the benchmark and the docs.
LLAMA3_8B = ModelShape(layers=32, hidden=4096, intermediate=14336, vocab=128256, heads=32, kv_heads=8, head_dim=128)
LLAMA3_70B = ModelShape(layers=80, hidden=8192, intermediate=28672, vocab=128256, heads=64, kv_heads=8, head_dim=128)


def shape_from_config(config) -> ModelShape:
    """ModelShape from a transformers config (nothing but config.json is read)."""
    text = getattr(config, "text_config", None) or config
    return ModelShape(layers=text.num_hidden_layers, hidden=text.hidden_size, intermediate=text.intermediate_size,
                      vocab=text.vocab_size, heads=text.num_attention_heads,
                      kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
                      head_dim=getattr(text, "head_dim", None) or 0,
                      tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


def read_model_config(base_model: str, data_dir: str):
    """The base model's transformers config (config.json only; HF_TOKEN from the environment for the hub)."""
    from transformers import AutoConfig

    from ..models import hub_token, resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(base_model, data_dir), token=hub_token())


def decoder_layer_classes(config) -> list[str]:
    """The decoder layer class names FSDP wraps one unit each (the model class's `_no_split_modules`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    names = list(getattr(cls, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{cls.__name__} names no decoder layer class (_no_split_modules): FSDP cannot wrap it "
                         "layer by layer; use multi_gpu='ddp'")
    return names


# ------------------------------------------------------------------------------------------------ the arithmetic
@dataclass(frozen=True)
class Workload:
    """The training knobs the memory depends on."""

    lora_r: int = 64
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    tokens_per_micro_batch: int = 4 * 2048
    load_in_4bit: bool = True
    dtype_bytes: int = 2


def weights_gib(shape: ModelShape, w: Workload) -> float:
    linear_bytes = NF4_BITS_PER_WEIGHT / 8 if w.load_in_4bit else w.dtype_bytes
    return (shape.layers * shape.linear_params_per_layer() * linear_bytes
            + shape.embedding_params() * w.dtype_bytes) / GIB


def layer_weights_gib(shape: ModelShape, w: Workload) -> float:
    linear_bytes = NF4_BITS_PER_WEIGHT / 8 if w.load_in_4bit else w.dtype_bytes
    return shape.linear_params_per_layer() * linear_bytes / GIB


def lora_state_gib(shape: ModelShape, w: Workload, bytes_per_param: float) -> float:
    """LoRA weights + gradients + optimizer state: fp32 AdamW 16 B/param, paged 8-bit AdamW 10 B/param."""
    return shape.lora_params(w.lora_r, w.lora_targets) * bytes_per_param / GIB


def activations_gib(shape: ModelShape, w: Workload, checkpointing: bool) -> float:
    """One micro-batch's activations on one GPU. Per token and layer: ~(10 hidden + 3 intermediate) values kept
    for the backward without checkpointing; with it only the layer's input (hidden values), plus one layer's
    working set during its recompute. Plus the fp32 logits of the loss. (Llama-3-8B, 4 x 2048 tokens: 13.8 GiB
    estimated with checkpointing and paged AdamW vs 10.5 measured; 52.7 without vs 41.4-58.9 measured: the
    estimate errs on the large side.)"""
    t, h, i = w.tokens_per_micro_batch, shape.hidden, shape.intermediate
    per_layer_full = t * (10 * h + 3 * i) * w.dtype_bytes
    kept = shape.layers * t * h * w.dtype_bytes + per_layer_full if checkpointing else shape.layers * per_layer_full
    return (kept + t * shape.vocab * 4) / GIB


@dataclass
class Candidate:
    """One way to run: its per-GPU estimate, term by term."""

    mode: str                       # ddp | fsdp
    checkpointing: bool
    offload: bool = False
    terms: dict = field(default_factory=dict)
    load_gib: float = 0.0           # the peak while loading (4-bit FSDP: the whole quantised model on each GPU)

    @property
    def total_gib(self) -> float:
        return sum(self.terms.values())

    def describe(self) -> str:
        name = self.mode.upper() + (" + CPU offload" if self.offload else "") + \
            (", checkpointing" if self.checkpointing else ", no checkpointing")
        parts = " + ".join(f"{k} {v:.1f}" for k, v in self.terms.items())
        load = f"; loading {self.load_gib:.1f} GiB" if self.load_gib else ""
        return f"{name}: {parts} = {self.total_gib:.1f} GiB per GPU{load}"


def replica(shape: ModelShape, w: Workload, checkpointing: bool, world: int) -> Candidate:
    """DDP: the whole model on every GPU (fast mode: fused AdamW fp32; lean: paged 8-bit AdamW), plus DDP's fp32
    gradient buckets when there are several GPUs."""
    terms = {"weights": weights_gib(shape, w),
             "LoRA+grads+AdamW": lora_state_gib(shape, w, 10 if checkpointing else 16),
             "activations": activations_gib(shape, w, checkpointing)}
    if world > 1:
        terms["DDP buckets"] = lora_state_gib(shape, w, 4)
    return Candidate(DDP, checkpointing, terms=terms)


def sharded(shape: ModelShape, w: Workload, world: int, offload: bool) -> Candidate:
    """FSDP over `world` GPUs, checkpointing on: each GPU keeps 1/world of the layers' weights (none with offload),
    two gathered decoder layers (the one running and the one prefetched), the embeddings and lm_head whole (their
    unit is gathered for the forward's start and end), 1/world of the LoRA state (fp32 AdamW; none on the GPU with
    offload) and its own micro-batch's activations."""
    emb = shape.embedding_params() * w.dtype_bytes / GIB
    layers = weights_gib(shape, w) - emb
    terms = {"weight shards": 0.0 if offload else layers / world, "gathered layers": 2 * layer_weights_gib(shape, w),
             "embeddings+lm_head": emb,
             "LoRA+grads+AdamW shards": 0.0 if offload else lora_state_gib(shape, w, 16) / world,
             "activations": activations_gib(shape, w, True)}
    load = weights_gib(shape, w) if w.load_in_4bit else 0.0
    return Candidate(FSDP, True, offload=offload, terms=terms, load_gib=load)


@dataclass
class ParallelPlan:
    """The mode chosen for this host and the arithmetic behind it."""

    mode: str                       # ddp | fsdp | none (one process)
    world: int
    gpu_gib: float
    usable_gib: float
    chosen: Candidate | None = None
    considered: list = field(default_factory=list)
    reason: str = ""

    @property
    def checkpointing(self) -> bool | None:
        return self.chosen.checkpointing if self.chosen else None

    @property
    def offload(self) -> bool:
        return bool(self.chosen and self.chosen.offload)

    def describe(self) -> str:
        lines = [f"multi-GPU: {self.mode.upper()} on {self.world} GPU(s) of {self.gpu_gib:.0f} GiB "
                 f"({self.usable_gib:.1f} usable each): {self.reason}"]
        lines += [("  -> " if c is self.chosen else "     ") + c.describe() for c in self.considered]
        return "\n".join(lines)


def fits(c: Candidate, usable: float) -> bool:
    return c.total_gib <= usable and c.load_gib <= usable


def plan_parallelism(shape: ModelShape, world: int, gpu_gib: float, w: Workload, *, force: str | None = None,
                     allow_fast: bool = True, checkpointing: bool | None = None) -> ParallelPlan:
    """Pick DDP or FSDP for `world` GPUs of `gpu_gib` each (pure: no GPU needed). The first that fits wins: a
    replica without checkpointing (when allowed), a replica with it, FSDP, FSDP with CPU offload. `force` ('ddp' or
    'fsdp') takes that mode whatever the arithmetic says (the estimate is still shown). `checkpointing` set (True or
    False) keeps the replica to that setting."""
    usable = gpu_gib * FSDP_USABLE_GPU_FRACTION
    plan = ParallelPlan(NONE, world, gpu_gib, usable)
    ckpt_options = [checkpointing] if checkpointing is not None else ([False, True] if allow_fast else [True])
    replicas = [replica(shape, w, c, world) for c in ckpt_options]
    shards = [sharded(shape, w, world, offload) for offload in (False, True)]
    if force == DDP:
        chosen = next((c for c in replicas if fits(c, usable)), replicas[-1])
        plan.considered, plan.chosen, plan.mode = replicas, chosen, DDP
        plan.reason = "multi_gpu='ddp' (set)" + ("" if fits(chosen, usable) else ": the estimate exceeds the card")
        return plan
    if force == FSDP:
        chosen = next((c for c in shards if fits(c, usable)), shards[0])
        plan.considered, plan.chosen, plan.mode = shards, chosen, FSDP
        plan.reason = "multi_gpu='fsdp' (set)" + ("" if fits(chosen, usable) else ": the estimate exceeds the card")
        return plan
    plan.considered = replicas + (shards if world > 1 else [])
    for c in plan.considered:
        if fits(c, usable):
            plan.chosen, plan.mode = c, c.mode if world > 1 else NONE
            plan.reason = ("a replica fits one GPU" if c.mode == DDP else
                           "a replica does not fit one GPU; sharded over the GPUs it does" +
                           (" with parameters and optimizer state offloaded to CPU" if c.offload else ""))
            return plan
    plan.chosen, plan.mode = None, (FSDP if world > 1 else NONE)
    big = min(plan.considered, key=lambda c: c.total_gib)
    plan.reason = (f"nothing fits: the smallest estimate is {big.total_gib:.1f} GiB per GPU"
                   + (f" and loading needs {big.load_gib:.1f} GiB (transformers loads the whole 4-bit model onto "
                      "each GPU before FSDP shards it)" if big.load_gib > usable else "")
                   + f" for {usable:.1f} usable; lower per_device_train_batch_size or max_length, or use more GPUs")
    return plan


def workload_of(cfg) -> Workload:
    return Workload(lora_r=cfg.lora_r, lora_targets=tuple(cfg.lora_target_modules),
                    tokens_per_micro_batch=cfg.per_device_train_batch_size * cfg.max_length,
                    load_in_4bit=cfg.load_in_4bit)


def host_gpu_memory_gib() -> float:
    """The smallest visible GPU's total memory in GiB, read without initialising CUDA in this (launching) process,
    which would keep a CUDA context on GPU 0 while the launched processes train: nvidia-smi, else torch."""
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        sizes = {line.split(",")[0].strip(): float(line.split(",")[1]) / 1024 for line in out.strip().splitlines()}
        chosen = [sizes[i.strip()] for i in visible.split(",") if i.strip() in sizes] if visible else []
        return min(chosen or sizes.values())
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        from .runtime import gpu_memory_gib

        return gpu_memory_gib()


# ------------------------------------------------------------------------------------------------ the launch
def fsdp_launch_flags(layer_classes: list[str], offload: bool = False) -> list[str]:
    """accelerate launch flags for FSDP-QLoRA (after --num_processes)."""
    flags = ["--use_fsdp"]
    for k, v in FSDP_FLAGS.items():
        flags += [k, v]
    return flags + ["--fsdp_transformer_layer_cls_to_wrap", ",".join(layer_classes),
                    "--fsdp_offload_params", "true" if offload else "false"]


# ------------------------------------------------------------------------------------------------ in each process
def fsdp_active() -> bool:
    """True inside a process that accelerate launched with FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def adapt_runtime(rt, cfg):
    """The runtime under FSDP: what is not tried (or cannot work) there is turned off, each with its reason."""
    import dataclasses

    changes = {"fsdp": True}
    notes = list(rt.notes)
    if "8bit" in rt.optim or "paged" in rt.optim or rt.optim == "adamw_torch_fused":
        changes["optim"] = "adamw_torch"
        notes.append(f"FSDP: optim {rt.optim} -> adamw_torch (sharded fp32 AdamW; PEFT: paged_adamw_8bit fails to "
                     "save a checkpoint under FSDP-QLoRA)")
    for name, why in (("fuse_lora", "fused LoRA layers"), ("use_liger_kernel", "Liger kernels"),
                      ("offload_checkpoints", "nbutils' checkpoint offload"), ("keep_base_weight", "keep_base_weight"),
                      ("upcast_non_quantized", "fp32 non-quantised weights (FSDP2 wants one dtype per unit)")):
        if getattr(rt, name):
            changes[name] = False
            notes.append(f"FSDP: {why} off (not tried under FSDP)")
    if cfg.merge:
        raise ValueError("merge=True under FSDP: merging needs the whole 16-bit model in one process; train with "
                         "merge=False, then merge the adapter in one process (python -m nbutils.finetune --merge ... "
                         "on one GPU, or PeftModel.from_pretrained(base, adapter).merge_and_unload())")
    changes["notes"] = notes
    return dataclasses.replace(rt, **changes)


def gather_trainable_state(model) -> dict:
    """The trainable (LoRA) parameters as full CPU tensors, gathered from their FSDP shards: a collective every rank
    calls in the same order; only the LoRA weights travel, never the base model."""
    import torch
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        t = p.full_tensor() if isinstance(p, DTensor) else p.detach()
        out[name.replace("_checkpoint_wrapped_module.", "")] = t.detach().to("cpu", copy=True).contiguous()
    torch.distributed.barrier()
    return out


def save_adapter_sharded(trainer, tokenizer, out_dir, is_main: bool):
    """Every rank gathers the LoRA weights; rank 0 writes the ordinary PEFT adapter once (atomically)."""
    from pathlib import Path

    from ..io import atomic_folder

    state = gather_trainable_state(trainer.model)
    if is_main:
        with atomic_folder(out_dir) as tmp:
            trainer.model.save_pretrained(str(tmp), state_dict=state)
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
