"""Stage 04's QLoRA training throughput on a GPU, the original project's recipe vs the stage's, through the stage's
own code (issues 8 and 15).

Subcommands (each prints a short table; `--json` writes every figure):
  make-model  random-weight Llama-3-8B (or tiny, or a config.json folder such as SmolLM2-135M's) from its config
              (no hub needed; the arithmetic and memory of training are the real ones)
  make-data   an original-format arxiv_instruction_dataset.json of synthetic rows (for the 04/05 notebooks)
  train       a few optimizer steps per case, measuring tokens/s (real, non-pad tokens), MFU (4*N FLOPs per token)
              and peak GPU memory; the stage's cases share one loaded 4-bit model; runs under `accelerate launch`
              too (DDP: tokens summed over ranks)
The attention/packing correctness check and the LoRA dropout kernels are benchmarks.finetune_check and
benchmarks.finetune_kernels; 05's generation speed is benchmarks.generation_speed.

Models are built through nbutils.finetune (FinetuneConfig, resolve_runtime, load_base_model,
prepare_model_for_training, build_trainer: TRL SFTTrainer with the stage's LoRA/SFT configs). A case (CASES) is a
dict of FinetuneConfig.from_params arguments: the stage's own fields, and `profile` ("full" when absent; `original`
is the original project's recipe, FinetuneConfig.PROFILE_OVERRIDES["original"]), plus the few keys of BENCH_KEYS
that say how the benchmark runs it (its data, a diagnostic patch, an Unsloth case). `stage_auto` sets no knob at
all (the stage's own resolution, printed). The cases share one loaded base model, reset to its loaded dtypes before
each case.

Issue 15: `stage_auto[_nodrop]`, `stage_lean*` (memory_mode lean; `_offload`: offload_checkpoints on) at LoRA
dropout 0.1 and 0, against `unsloth_{fast,default}[_nodrop]`: Unsloth trained as its notebooks do, each case in its
own process (benchmarks.unsloth_case) with `--unsloth-site` first on its PYTHONPATH; a second table pairs each stage
case with its Unsloth counterpart.

CPU dry run (tiny random Llama, plain LoRA, no 4-bit/Liger):
  python -m benchmarks.finetune_speed make-model --arch tiny --out /tmp/tiny --tokenizer .gpu_assets/smollm2 --cpu
  python -m benchmarks.finetune_speed train --model /tmp/tiny --cpu --cases original,default --steps 1 \
      --n-samples 120 --min-len 20 --max-len 60 --seq-len 128
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

from nbutils.finetune import FinetuneConfig
from nbutils.kernels.attention import VARLEN

from .common import (
    PEAK_TFLOPS,
    REPO,
    SHAPES,
    StepTimer,
    build_random_model,
    concat_chunks,
    environment,
    is_main,
    log,
    n_params_unquantised,
    set_attention,
    short_samples,
    write_json,
)

# ------------------------------------------------------------------------------------------------ cases
# Keys of a case that are not FinetuneConfig fields: how the benchmark runs it.
BENCH_KEYS = {
    "note": "what the case shows (printed, and in the JSON)",
    "data": "concat (the original's: EOS-joined fixed rows, attention crossing samples), packed (the samples; the "
            "stage packs them padding-free when packing is on, else pads each micro-batch); default packed",
    "steps": "timed optimizer steps (default: --steps)",
    "compile": "torch.compile of each decoder layer",
    "torch_dropout": "with fuse_lora: PyTorch's dropout instead of the Triton dropout kernels",
    "patch": "a diagnostic on top: nometrics (TRL's per-micro-batch metrics and their .item() syncs skipped: an upper "
             "bound), gcoff (Python's GC off while training), stocktrl (TRL's/Trainer's own per-micro-batch "
             "read-backs instead of nbutils.finetune.trainer's deferred ones)",
    "unsloth": "an Unsloth case (benchmarks.unsloth_case in its own process): its use_gradient_checkpointing, "
               "'unsloth' (its default) or 'false'",
}
# The stage's knobs before it chose them itself (issue 8): every one spelled out
_OURS = dict(attn_implementation=VARLEN, use_liger_kernel=True, gradient_checkpointing=False,
             upcast_non_quantized=False, optim="paged_adamw_8bit", packing=True, fuse_lora=False)
_LEAN = dict(_OURS, gradient_checkpointing=True)
_FAST = dict(_OURS, optim="adamw_torch_fused", fuse_lora=True)
_LEAN_FUSED = dict(_LEAN, fuse_lora=True)
# the original's knobs (profile `original`) on other data, or with one knob changed
_ORIGINAL = dict(profile="original")
_MB8, _MB16 = dict(per_device_train_batch_size=8, gradient_accumulation_steps=2), \
    dict(per_device_train_batch_size=16, gradient_accumulation_steps=1)
_NODROP = dict(lora_dropout=0.0)

CASES: dict[str, dict] = {
    "original": dict(_ORIGINAL, data="concat", note="the original project's recipe exactly (cross-sample attention)"),
    "original_noupcast": dict(_ORIGINAL, data="concat", upcast_non_quantized=False,
                              note="the original's recipe without peft's fp32 copy of embeddings/norms/lm_head"),
    "original_padded": dict(_ORIGINAL, steps=10, note="original knobs, short samples padded, no packing"),
    "nolig_varlen_nogc": dict(_OURS, use_liger_kernel=False, note="ablation: ours without Liger"),
    "default": dict(_OURS, note="proposed full-profile default"),
    "default_upcast": dict(_OURS, upcast_non_quantized=True, note="ablation: fp32 upcast kept"),
    "default_sdpa_mask": dict(_OURS, attn_implementation="sdpa",
                              note="ablation: isolation by SDPA block mask instead of varlen"),
    "default_fused_adamw": dict(_OURS, optim="adamw_torch_fused", note="ablation: fused AdamW (fp32 states)"),
    "default_mb8": dict(_OURS, **_MB8, note="ablation: micro-batch 8 x accum 2"),
    "lean_mb8": dict(_LEAN, **_MB8, note="lean, micro-batch 8 x accum 2"),
    "lean": dict(_LEAN, note="lean: under the original's memory"),
    "lean_mb16": dict(_LEAN, **_MB16, note="lean, micro-batch 16 x accum 1"),
    "ours_padded": dict(_OURS, attn_implementation="sdpa", packing=False, steps=10,
                        note="our knobs but padded instead of packed (short samples)"),
    "default_nodrop": dict(_OURS, optim="adamw_torch_fused", **_NODROP,
                           note="default + fused AdamW + LoRA dropout 0 (recipe change)"),
    "lean_nodrop": dict(_LEAN, **_NODROP, note="lean + LoRA dropout 0 (recipe change)"),
    "lean_mb8_nodrop": dict(_LEAN, **_MB8, **_NODROP, note="lean mb 8 + LoRA dropout 0 (recipe change)"),
    "fast": dict(_FAST, note="the stage's memory_mode=fast (>= 70 GiB): default_fused_adamw + fused LoRA"),
    "fast_bnb8": dict(_FAST, optim="adamw_bnb_8bit", note="fast with 8-bit AdamW, not paged"),
    "fast_mb8": dict(_FAST, **_MB8, note="fast, micro-batch 8 x accum 2 (the memory the Triton dropout frees)"),
    "fast_nodrop": dict(_FAST, **_NODROP, note="fast, fused LoRA forced on, LoRA dropout 0 (issue 25: the width "
                                               "crossover against default_nodrop)"),
    "fast_torchdrop": dict(_FAST, torch_dropout=True,
                           note="fast, fused LoRA but PyTorch's dropout (no Triton dropout kernels)"),
    "lean_fused_torchdrop": dict(_LEAN_FUSED, torch_dropout=True, note="lean, fused LoRA but PyTorch's dropout"),
    "lean_fused": dict(_LEAN_FUSED, note="the stage's memory_mode=lean: checkpointing, paged 8-bit AdamW, fused LoRA"),
    "lean_fused_bnb8": dict(_LEAN_FUSED, optim="adamw_bnb_8bit", note="lean with 8-bit AdamW, not paged"),
    "default_compile": dict(_OURS, compile=True, note="default + torch.compile per decoder layer"),
    "default_nolig_cpu": dict(_OURS, attn_implementation="sdpa", use_liger_kernel=False, note="CPU dry run"),
    "stage_auto": dict(note="no knob set: the stage's own defaults on this machine"),
    "auto_nometrics": dict(patch="nometrics", note="diagnostic: stage_auto without TRL's per-micro-batch metrics "
                                                   "(no .item() after each forward)"),
    "auto_gcoff": dict(patch="gcoff", note="diagnostic: stage_auto with Python's garbage collector off"),
    "auto_nokeep": dict(keep_base_weight=False, note="stage_auto with keep_base_weight=False (4-bit weights "
                                                     "dequantised again in the backward)"),
    "auto_nokeep_nodrop": dict(keep_base_weight=False, **_NODROP,
                               note="stage default at LoRA dropout 0 with keep_base_weight=False (fast mode's memory "
                                    "without the kept weights)"),
    "auto_stocktrl": dict(patch="stocktrl", note="stage_auto with TRL's own SFTTrainer read-backs (a .item() per "
                                                 "micro-batch for metrics and tokens)"),
    "lean_stocktrl": dict(_LEAN_FUSED, patch="stocktrl", note="lean_fused with TRL's own SFTTrainer read-backs"),
    # issue 15: the stage's own choices at LoRA dropout 0.1 (the original's) and 0 (Unsloth's), against Unsloth
    "stage_auto_nodrop": dict(_NODROP, note="stage default (fast on this card), LoRA dropout 0"),
    "stage_lean": dict(memory_mode="lean", note="the stage's memory_mode=lean, the rest its own defaults"),
    "stage_lean_nodrop": dict(memory_mode="lean", **_NODROP, note="stage lean, LoRA dropout 0"),
    "stage_lean_keep": dict(memory_mode="lean", keep_base_weight=True,
                            note="stage lean with keep_base_weight (under checkpointing: one layer's bf16 weights "
                                 "held)"),
    "stage_lean_keep_nodrop": dict(memory_mode="lean", keep_base_weight=True, **_NODROP,
                                   note="stage lean with keep_base_weight, LoRA dropout 0"),
    "stage_lean_offload": dict(memory_mode="lean", offload_checkpoints=True,
                               note="stage lean, checkpointed layer inputs in pinned host memory "
                                    "(nbutils.kernels.offload_checkpoint)"),
    "stage_lean_offload_nodrop": dict(memory_mode="lean", offload_checkpoints=True, **_NODROP,
                                      note="stage lean, offloaded checkpoints, LoRA dropout 0"),
    "stage_lean_offload_keep": dict(memory_mode="lean", offload_checkpoints=True, keep_base_weight=True,
                                    note="stage lean, offloaded checkpoints, keep_base_weight"),
    "stage_lean_offload_keep_nodrop": dict(memory_mode="lean", offload_checkpoints=True, keep_base_weight=True,
                                           **_NODROP, note="stage lean, offloaded checkpoints, keep_base_weight, "
                                                           "LoRA dropout 0"),
    "stage_nofuse_nodrop": dict(fuse_lora=False, **_NODROP, note="stage default at LoRA dropout 0 with PEFT's own "
                                                                 "LoRA layers (fuse_lora=False): before issue 15"),
    "unsloth_default": dict(unsloth="unsloth", note="Unsloth, use_gradient_checkpointing='unsloth' (its default)"),
    "unsloth_default_nodrop": dict(unsloth="unsloth", **_NODROP,
                                   note="Unsloth default, LoRA dropout 0 (its recommendation)"),
    "unsloth_fast": dict(unsloth="false", note="Unsloth without checkpointing (its fastest)"),
    "unsloth_fast_nodrop": dict(unsloth="false", **_NODROP, note="Unsloth without checkpointing, LoRA dropout 0"),
}


def split_case(case: dict) -> tuple[dict, dict]:
    """(FinetuneConfig.from_params arguments, the benchmark's own keys) of a case."""
    params = {k: v for k, v in case.items() if k not in BENCH_KEYS}
    return params, {k: v for k, v in case.items() if k in BENCH_KEYS}


def case_config(case: dict, args, device: str, steps: int) -> FinetuneConfig:
    """The stage's config for this case and run: the case's profile and fields, then the benchmark's run settings
    (model, sequence length, step count, no checkpoints/evals/logs). On the CPU the knobs a case spells out that need
    CUDA (Liger, a CUDA optimizer, sdpa_varlen) become their CPU counterparts."""
    params, _ = split_case(case)
    profile = params.pop("profile", "full")
    if device == "cpu":
        if "use_liger_kernel" in params:
            params["use_liger_kernel"] = False
        if "optim" in params:
            params["optim"] = "adamw_torch"
        if params.get("attn_implementation") == VARLEN:
            params["attn_implementation"] = "sdpa"
    return FinetuneConfig.from_params(
        profile=profile, data_dir=args.work_dir, base_model=args.model, max_length=args.seq_len,
        max_steps=args.warmup + steps, save_steps=10**6, logging_steps=10**6, eval_steps=10**6,
        warmup_steps=1, resume=False, load_in_4bit=not args.bf16_base, **params)


# ------------------------------------------------------------------------------------------------ models and data
def make_model(arch: str, out: str, tokenizer: str | None, device: str) -> dict:
    """Random-weight model folder (bf16 safetensors) + tokenizer files; returns what it built."""
    import shutil

    from transformers import AutoConfig

    t0 = time.time()
    cfg = arch if arch in SHAPES else AutoConfig.from_pretrained(arch)   # else a config.json folder
    build_random_model(cfg, device, out)
    n = n_params_unquantised(out)
    if tokenizer:
        for f in Path(tokenizer).iterdir():
            if f.name.startswith("tokenizer") or f.suffix in (".jinja",) or f.name == "special_tokens_map.json":
                shutil.copy(f, Path(out) / f.name)
    info = {"arch": arch, "params": n, "out": out, "seconds": round(time.time() - t0, 1)}
    log(f"built {arch}: {n / 1e9:.3f} B params -> {out} in {info['seconds']} s")
    return info


def make_data(out_dir: str, rows: int, seed: int = 0) -> str:
    """Original-format JSON (Instruction/Input/Output) of synthetic but well-formed rows."""
    import random

    rng = random.Random(seed)
    topics = ["sparse attention", "graph neural networks", "diffusion models", "contrastive learning",
              "protein folding", "quantum error correction", "federated learning", "reinforcement learning"]
    verbs = ["Summarise", "Explain", "Describe", "List the contributions of", "What problem does the paper solve in"]
    data = []
    for i in range(rows):
        t = rng.choice(topics)
        data.append({"Instruction": f"{rng.choice(verbs)} the section on {t}.",
                     "Input": f"Section {i}: we study {t} and report results on {rng.randint(2, 9)} benchmarks.",
                     "Output": f"The section studies {t}; it reports gains of {rng.randint(1, 30)}% over the "
                               f"baseline on {rng.randint(2, 9)} benchmarks and discusses limits."})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "arxiv_instruction_dataset.json"
    path.write_text(json.dumps(data, indent=1))
    log(f"wrote {rows} rows -> {path}")
    return str(path)


def set_float_weights(model, dtype) -> None:
    """Reset the shared base between cases: every non-quantised floating weight (norms, embeddings, lm_head) back
    to dtype (a case with upcast_non_quantized left them in fp32); 4-bit weights untouched."""
    import torch

    for p in model.parameters():
        if p.__class__.__name__ == "Params4bit" or not p.is_floating_point() or p.requires_grad:
            continue
        if p.dtype != dtype and p.dtype in (torch.float32, torch.bfloat16, torch.float16):
            p.data = p.data.to(dtype)


def skip_trl_metrics(trainer) -> None:
    """Diagnostic: the training loss exactly as TRL's compute_loss makes it (fused LM head, nll), without the
    entropy / token-accuracy / token-count metrics that it reads back with .item() after every micro-batch."""
    import torch

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * trainer.accelerator.num_processes
        return loss

    trainer.compute_loss = compute_loss


def use_stock_trl(trainer) -> None:
    """TRL's and the Trainer's own per-micro-batch read-backs on this trainer (nbutils.trainer defers them)."""
    from trl import SFTTrainer

    from nbutils.finetune.trainer import SyncFreeSFTTrainer

    for name in SyncFreeSFTTrainer.DEFERRING_METHODS:
        setattr(trainer, name, getattr(SFTTrainer, name).__get__(trainer))


def compile_layers(model) -> None:
    for layer in model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers:
        layer.compile()


def run_case(name: str, case: dict, base, tok, ds: dict, args, n_params: int, device: str) -> dict:
    import torch
    from datasets import Dataset

    from nbutils import finetune

    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    steps = case.get("steps") or args.steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = case_config(case, args, device, steps)
    patch, data_kind = case.get("patch", ""), case.get("data", "packed")
    rt = finetune.resolve_runtime(cfg, device=device)
    set_float_weights(base, getattr(torch, rt.dtype))  # as loaded; the stage upcasts if the case asks
    attn = set_attention(base, rt.attn_implementation)
    base = finetune.prepare_model_for_training(base, cfg, rt)
    data = ds["concat"] if data_kind == "concat" else ds["samples"]
    train = Dataset.from_dict(data)
    timer = StepTimer(args.warmup)
    timer.last_timed = args.warmup + steps
    timer.profile = name in (args.profile or "").split(",")
    timer.syncdebug = name in (args.sync_debug or "").split(",") and device == "cuda"
    timer.sync_step = args.warmup + steps + int(timer.profile)
    cfg.max_steps = args.warmup + steps + int(timer.profile) + int(timer.syncdebug)
    trainer = finetune.build_trainer(cfg, rt, base, tok, train, None, callbacks=[timer.callback()])
    if rt.fuse_lora and case.get("torch_dropout"):
        from nbutils.kernels.fused_lora import fuse_lora_layers

        fuse_lora_layers(trainer.model, triton_dropout=False)
    if case.get("compile"):
        compile_layers(trainer.model)
    if patch == "nometrics":
        skip_trl_metrics(trainer)
    if patch == "stocktrl":
        use_stock_trl(trainer)
    if timer.profile and args.trace_dir:
        timer.trace_path = str(Path(args.trace_dir) / f"trace_{name}.json")
    gc_was_on = gc.isenabled()
    if patch == "gcoff":
        gc.collect()
        gc.freeze()
        gc.disable()
    mem0 = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else 0.0
    t_start = time.time()
    err = None
    try:
        trainer.train()
    except Exception as e:  # record and go on with the next case
        err = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"[{name}] FAILED: {err}")
    wall = time.time() - t_start
    if patch == "gcoff" and gc_was_on:
        gc.enable()
        gc.unfreeze()
    tokens = timer.tok1 - timer.tok0
    secs = (timer.t1 - timer.t0) if timer.t0 is not None and timer.t1 is not None else float("nan")
    if world > 1:
        import torch.distributed as dist

        t = torch.tensor([tokens, secs], dtype=torch.float64, device=device)
        dist.all_reduce(t[:1])
        dist.all_reduce(t[1:], op=dist.ReduceOp.MAX)
        tokens, secs = int(t[0].item()), float(t[1].item())
    tps = tokens / secs if secs and secs == secs and secs > 0 else float("nan")
    res = {
        "case": name, "trainer": "stage", "note": case.get("note", ""),
        "data": "padded" if data_kind == "packed" and not rt.packing else data_kind, "attn": attn,
        "liger": rt.use_liger_kernel, "gradient_checkpointing": rt.gradient_checkpointing,
        "micro_batch": cfg.per_device_train_batch_size, "accum": cfg.gradient_accumulation_steps, "optim": rt.optim,
        "fp32_upcast": rt.upcast_non_quantized, "runtime": rt.describe(), "compile": bool(case.get("compile")),
        "lora_dropout": cfg.lora_dropout,
        "fuse_lora": rt.fuse_lora and ("torch-dropout" if case.get("torch_dropout") else "triton"),
        "world_size": world, "timed_steps": steps, "config": split_case(case)[0],
        "tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tps, 1),
        "tokens_per_step": round(tokens / steps, 1) if steps else None,
        "mfu": round(tps * 4 * n_params / (PEAK_TFLOPS * 1e12) / world, 4) if tps == tps else None,
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if device == "cuda" else None,
        "alloc_at_start_gib": round(mem0, 2), "wall_s": round(wall, 1), "error": err,
        "step_times_s": [round(x, 3) for x in timer.step_times],
        "profile": timer.profile_report,
        "syncs_in_one_step": sum(timer.sync_sites.values()) if timer.sync_sites is not None else None,
        "sync_sites": timer.sync_sites.most_common(20) if timer.sync_sites is not None else None,
        "loss": next((h.get("train_loss") for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
    }
    if is_main() and timer.profile_report:
        rep = timer.profile_report
        log(f"[{name}] profiled step: {rep['wall_s']} s wall, {rep['kernel_time_s']} s of GPU kernels")
        log(rep["top_gpu"])
        log(rep["top_cpu"])
        if rep.get("timeline"):
            log(f"[{name}] timeline: {json.dumps(rep['timeline'])}")
    if is_main() and timer.sync_sites is not None:
        log(f"[{name}] {res['syncs_in_one_step']} synchronising calls in one optimizer step:")
        for site, n in timer.sync_sites.most_common(20):
            log(f"  {n:6d}  {site}")
    if is_main():
        log(f"[{name}] {res['tokens_per_s']} tok/s, MFU {res['mfu']}, peak {res['peak_alloc_gib']} GiB "
            f"(reserved {res['peak_reserved_gib']}), steps {res['step_times_s']}, {res['wall_s']} s wall")
    # give the base model back without LoRA for the next case
    model = trainer.model
    del trainer
    if hasattr(model, "unload"):
        model.unload()
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def load_base(args, device: str):
    """The base model through the stage's own loader (4-bit nf4 double-quant on CUDA)."""
    from nbutils import finetune

    cfg = FinetuneConfig.from_params(profile="full", data_dir=args.work_dir, base_model=args.model,
                                     attn_implementation="sdpa", load_in_4bit=not args.bf16_base)
    rt = finetune.resolve_runtime(cfg, device=device)
    t0 = time.time()
    base = finetune.load_base_model(cfg, rt)  # each case then prepares it with its own knobs
    log(f"loaded base ({'4-bit' if rt.load_in_4bit else rt.dtype}) in {time.time() - t0:.1f} s; {rt.describe()}")
    return base


def cmd_train(args) -> list[dict]:
    import torch

    from nbutils.finetune import choose_pad_token
    from nbutils.models import load_tokenizer

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.tokenizer or args.model, args.work_dir)
    choose_pad_token(tok)
    n_params = n_params_unquantised(args.model)
    vocab = min(len(tok), 49152)
    samples = short_samples(args.n_samples, args.min_len, args.max_len, vocab, seed=args.seed)
    ds = {"samples": samples, "concat": concat_chunks(samples, args.seq_len, tok.eos_token_id)}
    if is_main():
        n_tok = sum(len(x) for x in samples["input_ids"])
        log(f"N = {n_params / 1e9:.3f} B params; {len(samples['input_ids'])} samples of {args.min_len}-"
            f"{args.max_len} tokens ({n_tok} tokens); {len(ds['concat']['input_ids'])} concatenated rows of "
            f"{args.seq_len}")
    base = None
    results = []
    for name in args.cases.split(","):
        case = CASES[name]
        if case.get("unsloth"):
            results.append(run_unsloth_case(name, case, args))
        else:
            if base is None:   # loaded at the first stage case (Unsloth's cases load their own, in their process)
                base = load_base(args, device)
            results.append(run_case(name, case, base, tok, ds, args, n_params, device))
        if is_main() and args.json:
            write_json(args.json, {"kind": "train", "env": environment(), "n_params": n_params,
                                   "args": vars(args), "results": results})
    if is_main():
        print_train_table(results)
        print_unsloth_comparison(results)
    return results


# issue 15: each stage case measured against Unsloth's case of the same kind (fast: no checkpointing; lean: its
# default, offloaded checkpointing) and the same LoRA dropout
def unsloth_counterpart(r: dict) -> str | None:
    if r.get("trainer") != "stage" or not r["case"].startswith("stage_"):
        return None
    kind = "default" if r.get("gradient_checkpointing") else "fast"
    return f"unsloth_{kind}" + ("_nodrop" if r.get("lora_dropout") == 0 else "")


def print_unsloth_comparison(results: list[dict]) -> list[dict]:
    """Stage vs Unsloth, pair by pair: speed ratio (target >= 1.1) and memory (lean: <= Unsloth's default)."""
    by = {r["case"]: r for r in results}
    rows = []
    for ours in results:
        ref_name = unsloth_counterpart(ours)
        ref = by.get(ref_name)
        if not ref or not ours.get("tokens_per_s") or not ref.get("tokens_per_s"):
            continue
        ratio = ours["tokens_per_s"] / ref["tokens_per_s"]
        rows.append({"stage": ours["case"], "unsloth": ref_name, "lora_dropout": ours.get("lora_dropout"),
                     "stage_tok_s": ours["tokens_per_s"], "unsloth_tok_s": ref["tokens_per_s"],
                     "ratio": round(ratio, 3) if ratio == ratio else None,
                     "stage_peak_gib": ours.get("peak_alloc_gib"), "unsloth_peak_gib": ref.get("peak_alloc_gib"),
                     "stage_loss": ours.get("loss"), "unsloth_loss": ref.get("loss")})
    if rows:
        log("\n| stage case | Unsloth case | dropout | stage tok/s | Unsloth tok/s | x Unsloth | stage GiB | "
            "Unsloth GiB | loss stage / Unsloth |")
        log("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            loss = " / ".join(f"{x:.4f}" if isinstance(x, float) else str(x)
                              for x in (r["stage_loss"], r["unsloth_loss"]))
            log(f"| {r['stage']} | {r['unsloth']} | {r['lora_dropout']} | {r['stage_tok_s']:,} | "
                f"{r['unsloth_tok_s']:,} | {r['ratio']} | {r['stage_peak_gib']} | {r['unsloth_peak_gib']} | {loss} |")
    return rows


def run_unsloth_case(name: str, case: dict, args) -> dict:
    """One Unsloth case in its own process (benchmarks.unsloth_case), Unsloth's folder first on PYTHONPATH; its
    JSON row, or a row with the error when the process fails. Its LoRA dropout and batch are the case's config."""
    import subprocess

    cfg = FinetuneConfig.from_params(**{"profile": "full", **split_case(case)[0]})
    out = Path(args.work_dir) / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.unsloth_case", "--model", args.model, "--case", name,
           "--gc", case["unsloth"], "--lora-dropout", str(cfg.lora_dropout), "--mb",
           str(cfg.per_device_train_batch_size), "--accum", str(cfg.gradient_accumulation_steps),
           "--steps", str(case.get("steps") or args.steps), "--warmup", str(args.warmup), "--seq-len",
           str(args.seq_len), "--n-samples", str(args.n_samples), "--min-len", str(args.min_len), "--max-len",
           str(args.max_len), "--seed", str(args.seed), "--work-dir", args.work_dir, "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        x for x in (args.unsloth_site, os.environ.get("PYTHONPATH", "")) if x))
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, timeout=args.unsloth_timeout, capture_output=True, text=True, cwd=REPO)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        text = f"timed out after {args.unsloth_timeout} s: " + str(e.stdout or "")
    # Unsloth's own report of what it patched (its banner, "Unsloth: ..." lines), then the end of the output
    said = [ln for ln in text.splitlines() if ("Unsloth" in ln or "==((" in ln or "O^O" in ln)
            and "examples/s" not in ln][:40]
    tail = text[-args.unsloth_log_chars:]
    log(f"[{name}] Unsloth said:\n" + "\n".join(said) + f"\n[{name}] end of its output:\n{tail}")
    if out.exists():
        res = json.loads(out.read_text())
    else:
        res = {"case": name, "trainer": "unsloth", "error": tail[-600:], "tokens_per_s": float("nan")}
    res.update(note=case.get("note", ""), process_wall_s=round(time.time() - t0, 1))
    for key in ("data", "attn", "liger", "fuse_lora", "gradient_checkpointing", "micro_batch", "accum", "optim",
                "world_size", "mfu", "peak_alloc_gib", "peak_reserved_gib", "loss"):
        res.setdefault(key, None)
    res.setdefault("lora_dropout", cfg.lora_dropout)
    return res


def print_train_table(results: list[dict]) -> None:
    """One line per case; the ratio is to original_noupcast (the stricter baseline) when it ran, else original."""
    ok = [r for r in results if r["tokens_per_s"] == r["tokens_per_s"] and r["tokens_per_s"]]
    ref = next((r for r in ok if r["case"] == "original_noupcast"), None) or next(
        (r for r in ok if r["case"] == "original"), None)
    ref_pad = next((r for r in results if r["case"] == "original_padded"), None)
    log(f"\n| case | data | attn | liger | fused LoRA | ckpt | optim | mb x acc | GPUs | tok/s | MFU | "
        f"peak GiB (alloc/reserved) | x {ref['case'] if ref else 'original'} |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = ref_pad if r["data"] == "padded" and ref_pad else ref
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base and r["tokens_per_s"] else "-"
        log(f"| {r['case']} | {r['data']} | {r['attn']} | {r['liger']} | {r.get('fuse_lora')} | "
            f"{r['gradient_checkpointing']} | {r['optim']} | {r['micro_batch']}x{r['accum']} | {r['world_size']} | "
            f"{r['tokens_per_s']:,} | {r['mfu']} | {r['peak_alloc_gib']}/{r['peak_reserved_gib']} | {ratio} |"
            + (f" ERROR {' | '.join(str(r['error']).splitlines()[-3:])}" if r['error'] else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--arch", default="llama3-8b", help=f"{' | '.join(SHAPES)} | a folder holding a config.json")
    m.add_argument("--out", required=True)
    m.add_argument("--tokenizer", default=None, help="folder whose tokenizer files are copied in")
    m.add_argument("--cpu", action="store_true")
    d = sub.add_parser("make-data")
    d.add_argument("--out", required=True)
    d.add_argument("--rows", type=int, default=64)
    t = sub.add_parser("train")
    t.add_argument("--model", default=None)
    t.add_argument("--tokenizer", default=None)
    t.add_argument("--work-dir", default="/tmp/bench_finetune_gpu")
    t.add_argument("--json", default=None)
    t.add_argument("--cpu", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cases", default="original,default,lean", help=f"comma list of: {', '.join(CASES)}")
    t.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case")
    t.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    t.add_argument("--seq-len", type=int, default=2048)
    t.add_argument("--n-samples", type=int, default=1500)
    t.add_argument("--min-len", type=int, default=100)
    t.add_argument("--max-len", type=int, default=600)
    t.add_argument("--profile", default="", help="cases whose extra last step is profiled (torch.profiler)")
    t.add_argument("--sync-debug", default="", help="cases whose extra last step counts synchronising calls")
    t.add_argument("--trace-dir", default="", help="with --profile: write trace_<case>.json.gz here and analyse it")
    t.add_argument("--bf16-base", action="store_true", help="plain LoRA on a bf16 base instead of 4-bit")
    t.add_argument("--unsloth-site", default="/tmp/unsloth_site",
                   help="folder with Unsloth and its pins (put first on PYTHONPATH for the unsloth_* cases only)")
    t.add_argument("--unsloth-timeout", type=int, default=240, help="seconds for one Unsloth case's process")
    t.add_argument("--unsloth-log-chars", type=int, default=1500, help="how much of its output to show")
    a = p.parse_args(argv)
    if a.cmd == "make-model":
        make_model(a.arch, a.out, a.tokenizer, "cpu" if a.cpu else "cuda")
    elif a.cmd == "make-data":
        make_data(a.out, a.rows)
    else:
        unknown = [c for c in a.cases.split(",") if c not in CASES]
        if unknown:
            p.error(f"unknown case(s) {', '.join(unknown)}: expected some of {', '.join(CASES)}")
        cmd_train(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
