"""One training process of stage 04: load and prepare the base, build TRL's trainer with the resolved knobs, train
(resuming a checkpoint of the same run), save the adapter in one go, optionally merge, and write the log."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

from ..io import atomic_folder, check_replaceable, write_json
from .config import FinetuneConfig
from .data import check_trainable, choose_pad_token, describe_truncation, load_training_data, truncation_report
from .result import LOSS_PNG, TRAIN_LOG, FinetuneResult, plot_loss, summarise
from .resume import plan_resume, run_record, start_run
from .runtime import Runtime, model_hidden_size, resolve_fuse_lora, resolve_runtime
from .tracking import Tracking, finish_trackers, plan_tracking, tracker_environment


# ------------------------------------------------------------------------------------------------ the model
def load_base_model(cfg: FinetuneConfig, rt: Runtime):
    """The base model as this runtime wants it (4-bit or not, dtype, attention, device), untouched otherwise."""
    import torch

    from ..models import load_causal_lm

    dtype = getattr(torch, rt.dtype)
    if rt.fsdp:  # 4-bit stored in the compute dtype (FSDP shards floating tensors); 16-bit: on the CPU, and
        # accelerate moves each rank's shards to its GPU (rank 0's weights broadcast: cpu_ram_efficient_loading)
        return load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=rt.load_in_4bit, dtype=dtype,
                              attn_implementation=rt.attn_implementation,
                              device=rt.device if rt.load_in_4bit else "cpu",
                              quant_storage=dtype if rt.load_in_4bit else None)
    return load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=rt.load_in_4bit, dtype=dtype,
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


def prepare_model_for_training(model, cfg: FinetuneConfig, rt: Runtime):
    """Every base weight frozen (the adapter brings the trainable ones) with checkpointing as resolved, dtypes as
    loaded (no fp32 copy: the residual stream stays in bf16/fp16); with upcast_non_quantized on a 4-bit base,
    peft's prepare_model_for_kbit_training (the original recipe: fp32 non-quantised weights) instead."""
    if rt.load_in_4bit and rt.upcast_non_quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=rt.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    set_gradient_checkpointing(model, rt.gradient_checkpointing)
    model.config.use_cache = False
    return model


def load_model_for_training(cfg: FinetuneConfig, rt: Runtime):
    return prepare_model_for_training(load_base_model(cfg, rt), cfg, rt)


# ------------------------------------------------------------------------------------------------ the trainer
def build_lora_config(cfg: FinetuneConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def build_sft_config(cfg: FinetuneConfig, rt: Runtime, has_eval: bool, tracking: Tracking | None = None):
    """TRL's SFTConfig from the config and the resolved runtime; `tracking` names the trackers (report_to) and the
    run, else nothing is reported."""
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
        report_to=list(tracking.report_to) if tracking and tracking.report_to else "none",
        run_name=tracking.run_name if tracking else None, disable_tqdm=False, dataloader_num_workers=0,
        ddp_find_unused_parameters=False if rt.world_size > 1 and not rt.fsdp else None,
        **eval_kwargs)


def build_trainer(cfg: FinetuneConfig, rt: Runtime, model, tokenizer, train_ds, eval_ds, callbacks=(),
                  tracking: Tracking | None = None):
    """The sync-free SFTTrainer with LoRA attached (fused where asked) and the non-finite-loss stop; with
    `tracking`, transformers' integrations for its trackers and a TrackerRecorder (found in the callbacks) that
    logs the config and runtime and records the runs' ids."""
    import torch

    from .callbacks import StopOnNonFiniteLoss, TrackerRecorder
    from .trainer import SyncFreeSFTTrainer

    callbacks = [StopOnNonFiniteLoss(), *callbacks]
    if rt.offload_checkpoints and rt.gradient_checkpointing:
        from ..kernels.offload_checkpoint import offloaded_checkpointing_callback

        callbacks.append(offloaded_checkpointing_callback())
    if tracking is not None and tracking.report_to:
        callbacks.append(TrackerRecorder(tracking, cfg.to_dict(), rt, cfg.checkpoint_dir))  # rt as trained
    trainer = SyncFreeSFTTrainer(model=model, args=build_sft_config(cfg, rt, eval_ds is not None, tracking),
                                 train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                                 peft_config=build_lora_config(cfg), callbacks=callbacks)
    rt.fuse_lora, rt.fuse_reason = resolve_fuse_lora(rt.fuse_lora, model_hidden_size(trainer.model))
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrackerRecorder):
            cb.bind(trainer.callback_handler.callbacks)
    if rt.fuse_lora:
        from ..kernels.fused_lora import fuse_lora_layers

        fuse_lora_layers(trainer.model, keep_base_weight=rt.keep_base_weight)
    if rt.fp16:  # fp16 AMP unscales fp32 master weights only: keep the trainable LoRA weights in fp32 (T4)
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.float32)
    return trainer


# ------------------------------------------------------------------------------------------------ failures
class FinetuneOOMError(RuntimeError):
    """Out of memory, with the knobs to turn."""


def explain_oom(cfg: FinetuneConfig, rt: Runtime) -> str:
    tips = [f"per_device_train_batch_size={cfg.per_device_train_batch_size} -> "
            f"{max(1, cfg.per_device_train_batch_size // 2)} (raise gradient_accumulation_steps to keep the "
            "effective batch)",
            f"max_length={cfg.max_length} -> {max(256, cfg.max_length // 2)}"]
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


def run_training(trainer, cfg: FinetuneConfig, rt: Runtime, resume_from: str | None):
    """trainer.train with running out of memory turned into the knobs to turn."""
    import torch

    try:
        return trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as e:
        raise FinetuneOOMError(explain_oom(cfg, rt)) from e
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):
            raise DiskFull(explain_disk_full(cfg.checkpoint_dir)) from e
        raise


class DiskFull(OSError):
    """Saving ran out of disk: names the folder and about how much a checkpoint needs."""


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC, or torch's serializer failing mid-write ("unexpected pos 19076608 vs 19076496": the file could not
    grow), anywhere in the exception's causes."""
    import errno

    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "No space left" in text or "unexpected pos" in text or "PytorchStreamWriter failed writing" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def explain_disk_full(checkpoint_dir: str | Path) -> str:
    """'no space left on <dir>: need ~N GB' (N: the largest checkpoint there, or 1 GB when none is), with what
    to do; training resumes from the last complete checkpoint."""
    import shutil

    d = Path(checkpoint_dir)
    sizes = [folder_bytes(p) for p in d.glob("checkpoint-*") if p.is_dir()] if d.is_dir() else []
    need = max(sizes, default=0) or 2**30
    probe = d if d.exists() else d.parent
    free = shutil.disk_usage(probe).free if probe.exists() else 0
    return (f"no space left on {d}: need ~{need / 1e9:.1f} GB for a checkpoint ({free / 1e9:.1f} GB free). Free "
            f"space there (or set checkpoint_dir on another disk) and rerun: training resumes from the last "
            f"complete checkpoint; one cut short is set aside")


# ------------------------------------------------------------------------------------------------ outputs
def check_outputs(cfg: FinetuneConfig) -> None:
    """Before hours of training: the adapter (and merged) folder must be new, empty or made by this project."""
    check_replaceable(cfg.output_dir, legacy=(TRAIN_LOG,), param="output_dir")
    if cfg.merge:
        check_replaceable(cfg.merged_dir, param="merged_dir")


def save_adapter(trainer, tokenizer, out_dir: str | Path) -> Path:
    """PEFT adapter + tokenizer, published in one go (never half an adapter). Load it with
    PeftModel.from_pretrained(base, out_dir) wherever the base model lives."""
    with atomic_folder(out_dir, legacy=(TRAIN_LOG,)) as tmp:
        trainer.model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def merge_adapter(cfg: FinetuneConfig, rt: Runtime, adapter_dir: str | Path) -> Path:
    """Base (in 16/32-bit, never 4-bit: merging into quantised weights loses precision) + adapter -> one model."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ..models import load_causal_lm

    base = load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=False, dtype=getattr(torch, rt.dtype),
                          device=rt.device)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_folder(cfg.merged_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
    return Path(cfg.merged_dir)


def runtime_versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__, "python": sys.version.split()[0]}


# ------------------------------------------------------------------------------------------------ the process
def load_data(cfg: FinetuneConfig, rt: Runtime, tokenizer, say: bool):
    """(train, eval, counts); under accelerate launch rank 0 makes/saves the split once, the others then load it."""
    if rt.world_size > 1:
        from accelerate import PartialState

        with PartialState().main_process_first():
            return load_training_data(cfg, tokenizer, verbose=say)
    return load_training_data(cfg, tokenizer, verbose=say)


def train(cfg: FinetuneConfig, extra_callbacks=(), verbose: bool = True) -> FinetuneResult:
    """Fine-tune cfg.base_model on the split in this process; writes (and returns) the adapter and its log."""
    from ..models import load_tokenizer, resolve_model_path
    from .callbacks import TrainLogRecorder, log_entries

    t_start = time.time()
    check_outputs(cfg)
    rt = resolve_runtime(cfg)
    if rt.device == "cuda" and "LOCAL_RANK" in os.environ:
        import torch

        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = verbose and is_main
    if say:
        print(rt.describe())
    tokenizer = load_tokenizer(cfg.base_model, cfg.data_dir)
    pad_note = choose_pad_token(tokenizer)
    if say:
        print(pad_note)
    train_ds, eval_ds, data_info = load_data(cfg, rt, tokenizer, say)
    trunc = [truncation_report(train_ds, tokenizer, cfg.max_length, "train")]
    check_trainable(trunc[0])
    if eval_ds is not None:
        trunc.append(truncation_report(eval_ds, tokenizer, cfg.max_length, "eval"))
    if say:
        print("\n".join(describe_truncation(rep) for rep in trunc))
        if eval_ds is None:
            print("the test split is empty: no eval loss during training")
    record = run_record(cfg, train_ds, rt)
    plan = plan_resume(cfg, record)
    tracking = plan_tracking(cfg, resuming=plan.checkpoint is not None)
    if say:
        print(tracking.describe())
    t_load = time.time()
    model = load_model_for_training(cfg, rt)
    with tracker_environment(tracking):
        trainer = build_trainer(cfg, rt, model, tokenizer, train_ds, eval_ds,
                                callbacks=[TrainLogRecorder(), *extra_callbacks], tracking=tracking)
    load_s = time.time() - t_load
    aside = start_run(cfg, plan, record, is_main, verbose)  # the model loaded: only now is anything moved
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if say:
        print(f"fused LoRA: {rt.fuse_reason}")
        print(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    if plan.checkpoint:
        trainer.args.eval_on_start = False  # the checkpoint's log already holds the eval before step 1
    t_train = time.time()
    with tracker_environment(tracking):
        try:
            result = run_training(trainer, cfg, rt, plan.checkpoint)
        finally:
            finish_trackers(tracking)
    train_s = time.time() - t_train
    from .callbacks import TrackerRecorder

    recorder = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrackerRecorder)), None)
    log = {
        "base_model": cfg.base_model, "base_model_path": resolve_model_path(cfg.base_model, cfg.data_dir),
        "config": cfg.to_dict(), "runtime": {**dataclasses.asdict(rt), **runtime_versions()},
        "pad_token": pad_note, "data": data_info, "truncation": trunc,
        "trainable_params": trainable, "total_params": total,
        "resumed_from": plan.checkpoint, "checkpoints_set_aside": str(aside) if aside else None,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss, "train_runtime_s": round(train_s, 1), "load_s": round(load_s, 1),
        "tokens_seen": trainer.state.num_input_tokens_seen, "log": log_entries(trainer.state.log_history),
        "tracking": {**(recorder.record if recorder else {"run_name": tracking.run_name, "report_to": []}),
                     "notes": tracking.notes},
    }
    log["summary"] = summarise(log)
    out = Path(cfg.output_dir)
    if rt.fsdp:  # a collective: every rank gathers the LoRA shards, rank 0 writes the adapter once
        from .fsdp import save_adapter_sharded

        save_adapter_sharded(trainer, tokenizer, out, trainer.is_world_process_zero())
    if trainer.is_world_process_zero():
        if not rt.fsdp:
            save_adapter(trainer, tokenizer, out)
        if cfg.merge:
            log["merged_dir"] = str(merge_adapter(cfg, rt, out))
        log["total_s"] = round(time.time() - t_start, 1)
        write_json(out / TRAIN_LOG, log)
        plot_loss(log, out / LOSS_PNG)
        if verbose:
            print(f"adapter -> {out}  ({log['total_s']} s in all)")
    return FinetuneResult(log=log, adapter_dir=str(out))
