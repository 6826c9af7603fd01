"""Stage 04's knobs: each field holds the `full` recipe's value and its help text; the demo profile is a short dict
of overrides. The memory thresholds the runtime decides with are defined here, once, and cited by the help text,
the code and its messages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import StageConfig, option
from ..templates import ALPACA, TEMPLATES

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# memory_mode="auto" picks "fast" on a GPU with at least this much memory. Fast-mode peaks measured on an H100,
# random-weight Llama-3-8B nf4, 4 x 4 x 2048 tokens (benchmarks/RESULTS.md): 58.9 GiB with PEFT's LoRA dropout,
# which keeps a dropped copy of every projection's input; 41.4 GiB with the dropout inside
# nbutils.kernels.fused_lora_triton's kernels or with no LoRA dropout.
FAST_MIN_GPU_GIB = 70.0
FAST_MIN_GPU_GIB_FUSED_DROPOUT = 47.0
# keep_base_weight=None keeps each dequantised 4-bit base weight from the forward to the backward in fast mode on a
# GPU with at least this much: +13 GiB for Llama-3-8B (41.3 -> 54.3 GiB peak), so not on 48 GB cards.
KEEP_BASE_WEIGHT_MIN_GPU_GIB = 70.0
# fuse_lora="auto" gives the LoRA layers nbutils.kernels' fused forward only on models at least this wide (the
# adapted layers' smallest input, i.e. hidden_size). Measured (benchmarks/RESULTS.md, issues 15 and 25): at 4096
# (Llama-3-8B, nf4, r=64) fused is faster than PEFT's layers (16,604 vs 14,974 tok/s at dropout 0; +5.8 % at 0.1);
# at 576 (SmolLM2-135M, full profile) it is 1.56x slower (13,751 vs 21,395 tok/s): each projection's work is too
# small for the fused path's fixed cost per layer and call. Widths in between are not measured yet
# (benchmarks.finetune_workloads has the crossover cases), so they keep PEFT's layers.
FUSE_LORA_MIN_HIDDEN = 4096
# What each memory mode sets among the fields left at None (measured as above, run 13: fast 14,634 tok/s at
# 54.3 GiB with keep_base_weight, 14,412 at 41.3 GiB without; lean 9,575 tok/s at 9.4 GiB; the original recipe,
# bf16-loaded, 7,195 tok/s at 10.5 GiB).
MEMORY_MODES = {"fast": {"gradient_checkpointing": False, "optim": "adamw_torch_fused"},
                "lean": {"gradient_checkpointing": True, "optim": "paged_adamw_8bit"}}
# Stage 05 (load_in_4bit=None) loads its base in bf16 on a CUDA GPU with at least this much memory, in 4-bit below
# (bf16 keeps the adapter attached without dequantising in every matmul; Llama-3-8B's bf16 weights are 16 GB).
EVAL_BF16_MIN_GPU_GIB = 40.0
# multi_gpu="auto" plans DDP or FSDP from an estimate of each GPU's memory (nbutils/finetune/fsdp.py) against this
# fraction of the card (the allocator's fragmentation and the CUDA context take the rest).
FSDP_USABLE_GPU_FRACTION = 0.9
# nf4 with double quantisation: 4 bits + the blocks' scales (fp8 per 64 weights, fp32 per 256 blocks) per weight.
NF4_BITS_PER_WEIGHT = 4.127
AUTO = "auto"
MULTI_GPU_MODES = ("ddp", "fsdp")


@dataclass
class FinetuneConfig(StageConfig):
    """Every knob of stage 04; `FinetuneConfig()` is the full recipe. `None` paths default under data_dir.
    The original project's recipe exactly is the `original` profile (`FinetuneConfig.overrides("original")`)."""

    PROFILE_OVERRIDES: ClassVar[dict] = {
        # ~2 minutes on 2 CPU cores: SmolLM2-135M, plain LoRA r=16 on the same 7 projections, 384 tokens.
        "demo": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "load_in_4bit": False, "lora_r": 16,
                 "lora_alpha": 32, "lora_dropout": 0.05, "max_length": 384, "per_device_train_batch_size": 2,
                 "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "learning_rate": 1e-3,
                 "max_steps": 16, "eval_steps": 8, "save_steps": 8, "logging_steps": 2, "max_eval_samples": 8,
                 "packing": False, "report_to": ["none"]},
        # The original project's recipe exactly (the baseline of benchmarks/RESULTS.md): the same knob values as
        # full, without the speed-ups: checkpointing + paged 8-bit AdamW, SDPA, no packing, PEFT's own LoRA
        # forward, no Liger, peft's fp32 copy of the non-quantised weights, no checkpoint offload.
        "original": {"memory_mode": "lean", "use_liger_kernel": False, "upcast_non_quantized": True,
                     "attn_implementation": "sdpa", "packing": False, "fuse_lora": False,
                     "offload_checkpoints": False},
    }
    PATH_FIELDS: ClassVar[dict] = {"dataset_dir": "dataset", "output_dir": "adapter",
                                   "checkpoint_dir": "checkpoints", "merged_dir": "merged", "tracking_dir": "runs"}
    INPUT_FIELDS: ClassVar[tuple] = ('base_model',)
    OUTPUT_FIELDS: ClassVar[tuple] = ('dataset_dir', 'output_dir', 'checkpoint_dir', 'merged_dir', 'tracking_dir')

    base_model: str = option("meta-llama/Meta-Llama-3-8B", "hub id (HF_TOKEN from the environment) or local folder")
    load_in_4bit: bool = option(True, "QLoRA: nf4 double-quant base (CUDA only; CPU trains plain LoRA)")
    template: str = option(ALPACA, "prompt format: the original's Alpaca text or the model's chat template",
                           choices=TEMPLATES)
    # LoRA
    lora_r: int = option(64, "LoRA rank", ge=1)
    lora_alpha: int = option(16, "LoRA alpha (scale = alpha / r)", gt=0)
    lora_dropout: float = option(0.1, "dropout on the LoRA input", ge=0, lt=1)
    lora_target_modules: list = option(LORA_TARGETS, "projections that get a LoRA adapter")
    # optimisation
    num_train_epochs: float = option(3.0, "epochs over the train split (when max_steps <= 0)", gt=0)
    max_steps: int = option(-1, "> 0: this many optimizer steps, overriding num_train_epochs", ge=-1)
    per_device_train_batch_size: int = option(4, "rows per micro-batch and GPU", ge=1)
    gradient_accumulation_steps: int = option(4, "micro-batches per optimizer step", ge=1)
    per_device_eval_batch_size: int = option(8, "rows per eval batch", ge=1)
    learning_rate: float = option(2e-4, "peak learning rate", gt=0)
    lr_scheduler_type: str = option("linear", "transformers scheduler name")
    warmup_steps: int = option(5, "linear warm-up steps", ge=0)
    max_grad_norm: float = option(0.3, "gradient clipping norm", ge=0)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    optim: str | None = option(None, "transformers optimizer name; None: from memory_mode (fast: adamw_torch_fused, "
                               "lean: paged_adamw_8bit); CPU falls back to adamw_torch")
    gradient_checkpointing: bool | None = option(None, "None: from memory_mode (fast: off, lean: on)")
    memory_mode: str = option(AUTO, f"fast (no checkpointing, fused AdamW) or lean (checkpointing, paged 8-bit "
                              f"AdamW); auto: on CUDA fast with >= {FAST_MIN_GPU_GIB_FUSED_DROPOUT:g} GiB "
                              f"(>= {FAST_MIN_GPU_GIB:g} GiB where PEFT's own LoRA dropout keeps its copies), else "
                              "lean; CPU: lean. Fills only gradient_checkpointing/optim left at None",
                              choices=(AUTO, *MEMORY_MODES))
    use_liger_kernel: bool | None = option(None, "Liger's fused RMSNorm/SwiGLU/RoPE/loss kernels; None: on with "
                                           "CUDA when liger-kernel imports")
    fuse_lora: bool | str = option(AUTO, "LoRA scale and sum folded into one GEMM and, on CUDA, the LoRA dropout "
                                   "inside Triton kernels (nbutils.kernels; same math); False: PEFT's own forward; "
                                   f"auto: fused on models with hidden_size >= {FUSE_LORA_MIN_HIDDEN} (measured "
                                   "faster there; 1.56x slower than PEFT's layers at SmolLM2's 576)", choices=(AUTO,))
    keep_base_weight: bool | None = option(None, "fused LoRA + Triton dropout + 4-bit: keep each dequantised base "
                                           "weight for the backward (+13 GiB on Llama-3-8B); None: on in fast "
                                           f"mode with >= {KEEP_BASE_WEIGHT_MIN_GPU_GIB:g} GiB GPU memory")
    offload_checkpoints: bool | None = option(None, "with gradient checkpointing: keep each layer's checkpointed "
                                              "input in pinned host memory, fetched back one layer ahead "
                                              "(nbutils.kernels.offload_checkpoint; same gradients, -1.8 GiB on "
                                              "Llama-3-8B lean at the same speed); None: on with CUDA when "
                                              "checkpointing is on in a single process")
    upcast_non_quantized: bool = option(False, "4-bit: fp32 copy of embeddings/norms/lm_head (peft's "
                                        "prepare_model_for_kbit_training, the original's; slower, +5 GiB)")
    seed: int = option(42, "seed of the split, the data order and LoRA's initialisation", ge=0)
    # sequences
    max_length: int = option(2048, "tokens per row (longer rows are truncated, and counted)", ge=16)
    packing: bool | str = option(AUTO, "padding-free packing only (samples never attend to each other); auto: on "
                                 "with flash-attn or sdpa_varlen, off otherwise", choices=(AUTO,))
    packing_strategy: str = option("bfd", "TRL packing strategy; only the padding-free ones are accepted",
                                   choices=("bfd", "bfd_split", "wrapped"))
    max_train_samples: int | None = option(None, "use only the first N train rows", ge=1)
    max_eval_samples: int | None = option(None, "use only the first N test rows for the eval loss", ge=0)
    # evaluation / checkpoints / logs
    eval_steps: int = option(50, "eval loss on the test split every N steps (and before step 1)", ge=1)
    save_steps: int = option(50, "checkpoint every N steps", ge=1)
    save_total_limit: int = option(3, "checkpoints kept", ge=1)
    logging_steps: int = option(5, "log loss, tokens/s and memory every N steps", ge=1)
    resume: bool | str = option(AUTO, "auto: continue a checkpoint of the same run; True: must; False: start "
                                "fresh. Checkpoints not resumed are moved aside, never deleted", choices=(AUTO,))
    merge: bool = option(False, "also write the merged full model to merged_dir")
    # experiment tracking (transformers' integrations; nbutils.finetune.tracking)
    report_to: list = option(["tensorboard"], "experiment trackers: none, tensorboard, wandb, mlflow (several: a list "
                             "or 'tensorboard,mlflow'); keys from the environment only; one not installed is left "
                             "out with a note")
    run_name: str | None = option(None, "None: the runner's run folder name (data_dir/runs/<time>-<profile>), else "
                                  "<UTC time>-<profile>; a resumed run keeps its own")
    tracking_dir: str | None = option(None, "None: data_dir/runs (TensorBoard logs in <run name>/tensorboard/, W&B "
                                      "files, the MLflow file store mlruns/ when MLFLOW_TRACKING_URI is unset)")
    attn_implementation: str | None = option(None, "None: flash_attention_2 when usable, else on CUDA sdpa_varlen "
                                             "(PyTorch's flash varlen kernel) when packing, else sdpa")
    multi_gpu: bool | str = option(AUTO, "auto (or True): more than one visible GPU -> accelerate launch, DDP when a "
                                   "replica fits one GPU, else FSDP-QLoRA sharded over the GPUs (the arithmetic is "
                                   "printed); 'ddp' or 'fsdp' forces the mode; False: one process",
                                   choices=(AUTO, *MULTI_GPU_MODES))
    num_processes: int | None = option(None, "GPUs for accelerate launch (None: all visible)", ge=1)
    dataset_dir: str | None = option(None, "None: data_dir/dataset")
    output_dir: str | None = option(None, "the adapter folder; None: data_dir/models/adapter")
    checkpoint_dir: str | None = option(None, "None: data_dir/models/checkpoints")
    merged_dir: str | None = option(None, "None: data_dir/models/merged")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 16:
            raise ValueError(f"max_length={self.max_length} is too small to hold a prompt and an answer")
