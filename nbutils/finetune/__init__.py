"""Stage 04: LoRA / QLoRA supervised fine-tuning with TRL's SFTTrainer, correct by default.

    cfg = FinetuneConfig.from_params(profile="demo", data_dir="data")
    result = run(cfg)            # FinetuneResult: .summary(), .table() (the log), .loss_plot, .truncation_text()

The original project's knobs are all kept as parameters (4-bit nf4 double-quant, LoRA r=64 alpha=16 dropout 0.1
on the seven projections, batch 4 x accum 4, gradient checkpointing, paged_adamw_8bit, lr 2e-4 linear, warmup 5,
max_grad_norm 0.3, 3 epochs, 2048 tokens, Alpaca template). On a GPU the speed knobs default to the measured fast
recipe (benchmarks/RESULTS.md): no fp32 copy of the non-quantised weights, padding-free packing with PyTorch's
flash varlen kernel when flash-attn is absent, Liger kernels when installed, fused LoRA layers with the dropout in
Triton kernels (nbutils.kernels), TRL's trainer without its per-micro-batch GPU read-backs (trainer.py), and a
memory mode chosen from the GPU's memory (config.py holds the thresholds). Its defaults are fixed:

- the loss covers the response only (prompt/completion rows: TRL masks the prompt with -100);
- EOS ends every completion and stays in the labels, and the pad token is a different token where the tokenizer
  has one, so the model learns to stop;
- packing never lets samples attend to each other: it is padding-free (position_ids restart per sample) or refused;
- truncation is counted and reported; eval loss on the test split during training; checkpoints every N steps and
  automatic resume (same step, same data order), checkpoints of another configuration moved aside, never deleted;
  a non-finite loss stops the run with a clear error; an out-of-memory error names the knobs to turn.

Modules: config (knobs, thresholds), runtime (what this machine does), data, callbacks, resume, tracking
(report_to: TensorBoard / W&B / MLflow, run ids for 05), train (one process), result (log, plot, FinetuneResult),
stage (run: here or under accelerate), fsdp (DDP or FSDP-QLoRA over one host's GPUs: the memory arithmetic, the
launch flags, the sharded adapter save), trainer (SyncFreeSFTTrainer),
__main__ (`python -m nbutils.finetune`, also under `accelerate launch -m nbutils.finetune`).
Outputs under data_dir/models/: adapter/ (PEFT adapter + tokenizer + train_log.json + loss.png), checkpoints/,
optionally merged/.
"""
from .config import FinetuneConfig
from .data import choose_pad_token, describe_truncation
from .result import FinetuneResult
from .runtime import Runtime, resolve_runtime
from .stage import cli_args, run, wants_distributed
from .tracking import tensorboard_logdir
from .train import build_trainer, load_base_model, prepare_model_for_training

__all__ = ["FinetuneConfig", "FinetuneResult", "Runtime", "build_trainer", "choose_pad_token", "cli_args",
           "describe_truncation", "load_base_model", "prepare_model_for_training", "resolve_runtime", "run",
           "tensorboard_logdir", "wants_distributed"]
