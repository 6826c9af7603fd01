"""Issue 15: one QLoRA training case with Unsloth, the way its notebooks train, measured like the stage's cases.

Run by `python -m benchmarks.finetune_speed train --cases unsloth_...` as a subprocess whose PYTHONPATH puts
Unsloth's own folder first (Unsloth pins TRL <= 1.15 and datasets < 5, which the stage's stack must not see), one
process per case: Unsloth patches transformers/PEFT/TRL globally on import and per loaded model.

What it does, as Unsloth's notebooks do: `FastLanguageModel.from_pretrained(load_in_4bit=True)`,
`FastLanguageModel.get_peft_model(r, alpha, dropout, the seven projections, use_gradient_checkpointing)`, TRL's
`SFTTrainer` (patched by Unsloth) with `adamw_8bit`. What it shares with the stage's cases (benchmarks.finetune_speed):
the model folder, the pre-tokenised samples (same seed), padding-free BFD packing of `max_length` rows with the
loss on the completion only, batch x accumulation, learning rate, warm-up, clipping, and the measurement
(StepTimer: real tokens counted at each forward, the timed window synchronised at its two ends only; peak memory
from torch's allocator; MFU at 4 N FLOPs a token).

Offline: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE = 1 (Unsloth then skips hf_transfer and its
hub checks), UNSLOTH_DISABLE_STATISTICS=1 (its usage ping), local_files_only=True and fix_tokenizer=False.

  PYTHONPATH=/tmp/unsloth_site:/tmp/site python -m benchmarks.unsloth_case --model /tmp/llama3-8b-random \
      --gc unsloth --lora-dropout 0 --json /tmp/u.json
"""
from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import unsloth  # noqa: E402,F401  (first: it patches transformers, PEFT and TRL on import)
from unsloth import FastLanguageModel  # noqa: E402

from . import common  # noqa: E402
from .common import LORA_TARGETS as TARGETS  # noqa: E402


def load(args):
    """The 4-bit model with Unsloth's LoRA attached, and its tokenizer."""
    model, tok = FastLanguageModel.from_pretrained(
        model_name=args.model, max_seq_length=args.seq_len, dtype=None, load_in_4bit=True, fix_tokenizer=False,
        local_files_only=True, use_gradient_checkpointing=args.gc, random_state=args.train_seed)
    model = FastLanguageModel.get_peft_model(
        model, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=TARGETS,
        bias="none", use_gradient_checkpointing=args.gc, random_state=args.train_seed)
    return model, tok


def sft_config(args):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(Path(args.work_dir) / "unsloth_ckpt"), seed=args.train_seed, data_seed=args.train_seed,
        max_steps=args.warmup + args.steps, per_device_train_batch_size=args.mb,
        gradient_accumulation_steps=args.accum, learning_rate=2e-4, lr_scheduler_type="linear", warmup_steps=1,
        max_grad_norm=0.3, weight_decay=0.0, optim=args.optim, bf16=True, max_length=args.seq_len, packing=True,
        packing_strategy="bfd", padding_free=True, completion_only_loss=True, save_strategy="no",
        logging_steps=10**6, report_to="none", dataloader_num_workers=0)


def run(args) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    torch.cuda.reset_peak_memory_stats()
    t_load = time.time()
    model, tok = load(args)
    load_s = time.time() - t_load
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vocab = min(len(tok), 49152)
    samples = common.short_samples(args.n_samples, args.min_len, args.max_len, vocab, seed=args.seed)
    timer = common.StepTimer(args.warmup)
    timer.last_timed = args.warmup + args.steps
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_dict(samples),
                         args=sft_config(args), callbacks=[timer.callback()])
    torch.cuda.reset_peak_memory_stats()
    mem0 = torch.cuda.memory_allocated() / 2**30
    t0 = time.time()
    err = None
    try:
        trainer.train()
    except Exception as e:  # recorded: the table shows it
        err = f"{type(e).__name__}: {str(e)[:300]}"
        common.log(f"[{args.case}] FAILED: {err}")
    tokens = timer.tok1 - timer.tok0
    secs = (timer.t1 - timer.t0) if timer.t0 is not None and timer.t1 is not None else float("nan")
    tps = tokens / secs if secs == secs and secs > 0 else float("nan")
    n_params = common.n_params_unquantised(args.model)
    env = common.environment()
    for pkg in ("unsloth", "unsloth_zoo"):
        env[pkg] = getattr(sys.modules.get(pkg), "__version__", None)
    return {
        "case": args.case, "trainer": "unsloth", "note": f"Unsloth, use_gradient_checkpointing={args.gc!r}",
        "data": "packed", "attn": getattr(model.config, "_attn_implementation", None), "liger": False,
        "gradient_checkpointing": args.gc, "micro_batch": args.mb, "accum": args.accum, "optim": args.optim,
        "lora_dropout": args.lora_dropout, "fuse_lora": "unsloth", "world_size": 1, "timed_steps": args.steps,
        "tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tps, 1),
        "tokens_per_step": round(tokens / args.steps, 1),
        "mfu": round(tps * 4 * n_params / (common.PEAK_TFLOPS * 1e12), 4) if tps == tps else None,
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "alloc_at_start_gib": round(mem0, 2), "load_s": round(load_s, 1), "wall_s": round(time.time() - t0, 1),
        "error": err, "step_times_s": [round(x, 3) for x in timer.step_times],
        "loss": next((h.get("train_loss") for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
        "env": env,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--case", default="unsloth")
    p.add_argument("--gc", default="unsloth", type=lambda s: False if s.lower() in ("false", "0", "no") else s,
                   help='use_gradient_checkpointing: "unsloth" (its default: offloaded) or false')
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--optim", default="adamw_8bit", help="its notebooks' optimizer")
    p.add_argument("--mb", type=int, default=4)
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--n-samples", type=int, default=1500)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="the samples' seed (benchmarks.finetune_speed --seed)")
    p.add_argument("--train-seed", type=int, default=42, help="the trainer's and LoRA init's (the stage's seed)")
    p.add_argument("--work-dir", default="/tmp/bench_finetune_gpu")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    res = run(args)
    common.write_json(args.json, res)
    common.log(f"[{res['case']}] {res['tokens_per_s']} tok/s, MFU {res['mfu']}, peak {res['peak_alloc_gib']} GiB "
              f"(reserved {res['peak_reserved_gib']}), steps {res['step_times_s']}, load {res['load_s']} s, "
              f"{res['wall_s']} s train, loss {res['loss']}")
    return 0 if res["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
