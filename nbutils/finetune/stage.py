"""Running stage 04: in this process, or, with several GPUs, the same entry point under `accelerate launch` (one
process per GPU; a notebook is one process, so it launches and waits): DDP, or FSDP-QLoRA when a replica does not
fit one GPU (fsdp.py holds the arithmetic and the recipe)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from ..io import read_json
from ..lock import locked_stage
from .config import FinetuneConfig
from .result import TRAIN_LOG, FinetuneResult
from .runtime import prefer_expandable_segments


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def wants_distributed(cfg: FinetuneConfig) -> bool:
    """True when this call should launch one process per GPU (not already inside one, multi_gpu not False)."""
    if "LOCAL_RANK" in os.environ or cfg.multi_gpu is False:
        return False
    return gpu_count() > 1 and (cfg.num_processes or gpu_count()) > 1


def plan_launch(cfg: FinetuneConfig, world: int | None = None, gpu_gib: float | None = None):
    """DDP or FSDP for this host (fsdp.plan_parallelism on the base model's config.json), printed with its
    arithmetic. Without a readable config.json: DDP, as before the plan (or FSDP when forced)."""
    from .config import MEMORY_MODES
    from .fsdp import (
        DDP,
        FSDP,
        ParallelPlan,
        host_gpu_memory_gib,
        plan_parallelism,
        read_model_config,
        shape_from_config,
        workload_of,
    )

    world = world or cfg.num_processes or gpu_count()
    gpu_gib = gpu_gib if gpu_gib is not None else host_gpu_memory_gib()
    force = cfg.multi_gpu if cfg.multi_gpu in (DDP, FSDP) else None
    try:
        shape = shape_from_config(read_model_config(cfg.base_model, cfg.data_dir))
    except Exception as e:  # noqa: BLE001 - a hub id offline, an unusual config: no arithmetic, say so
        plan = ParallelPlan(force or DDP, world, gpu_gib, gpu_gib)
        plan.reason = f"no memory estimate ({type(e).__name__}: {e}); {'set' if force else 'DDP as before'}"
        return plan, None
    allow_fast = cfg.memory_mode != "lean" if cfg.gradient_checkpointing is None else not cfg.gradient_checkpointing
    ckpt = cfg.gradient_checkpointing
    if ckpt is None and cfg.memory_mode in MEMORY_MODES:
        ckpt = MEMORY_MODES[cfg.memory_mode]["gradient_checkpointing"]
    plan = plan_parallelism(shape, world, gpu_gib, workload_of(cfg), force=force, allow_fast=allow_fast,
                            checkpointing=ckpt)
    return plan, shape


def planned_flags(cfg: FinetuneConfig, plan) -> list[str]:
    """Config flags the plan adds for the launched processes: memory_mode lean when only checkpointing fits."""
    if plan.chosen and plan.chosen.checkpointing and cfg.memory_mode == "auto" and cfg.gradient_checkpointing is None:
        return ["--memory_mode", "lean"]
    return []


def cli_args(cfg: FinetuneConfig) -> list[str]:
    """The config as `--name value` flags for `python -m nbutils.finetune` (only values off the profile's)."""
    defaults = FinetuneConfig.defaults(cfg.profile)
    default_paths = FinetuneConfig(profile=cfg.profile, data_dir=cfg.data_dir)
    args = ["--profile", cfg.profile, "--data_dir", cfg.data_dir]
    for k, v in cfg.to_dict().items():
        if k in ("profile", "data_dir", "multi_gpu", "num_processes") or v is None or v == defaults.get(k):
            continue
        if k in FinetuneConfig.PATH_FIELDS and v == getattr(default_paths, k):
            continue
        args += [f"--{k}", json.dumps(v) if isinstance(v, (list, bool)) else str(v)]
    return args


def launch_command(cfg: FinetuneConfig, plan=None, layer_classes: list[str] | None = None) -> list[str]:
    """`accelerate launch` of `python -m nbutils.finetune`: DDP (--multi_gpu), or with an FSDP plan the FSDP flags
    (fsdp.fsdp_launch_flags: decoder-layer wrapping, sharded checkpoints, offload as planned)."""
    from .fsdp import FSDP, fsdp_launch_flags

    n = cfg.num_processes or (plan.world if plan else None) or gpu_count()
    if plan is not None and plan.mode == FSDP:
        mode = ["--num_processes", str(n), *fsdp_launch_flags(layer_classes or [], plan.offload)]
    else:
        mode = ["--multi_gpu", "--num_processes", str(n)]
    extra = planned_flags(cfg, plan) if plan is not None else []
    return [sys.executable, "-m", "accelerate.commands.launch", *mode, "-m", "nbutils.finetune", *cli_args(cfg),
            *extra]


def launch_distributed(cfg: FinetuneConfig) -> FinetuneResult:
    """Run the training entry point under `accelerate launch` (DDP or FSDP, as planned) and read back its log."""
    from ..splits import load_split
    from .fsdp import FSDP, decoder_layer_classes, read_model_config

    load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, seed=cfg.seed)  # made once here, not by every rank
    if cfg.run_name is None:  # one name for every rank (each would take its own time stamp)
        from .tracking import plan_tracking

        cfg = dataclasses.replace(cfg, run_name=plan_tracking(cfg, resuming=cfg.resume is not False).run_name)
    plan, _ = plan_launch(cfg)
    print(plan.describe())
    if plan.chosen is None and plan.mode == FSDP and cfg.multi_gpu != FSDP:
        raise RuntimeError(f"stage 04 does not fit this host: {plan.reason}")
    if plan.mode == FSDP and cfg.merge:
        raise ValueError("merge=True with FSDP: merging needs the whole 16-bit model in one process; train with "
                         "merge=False, then merge the adapter in one process")
    layers = decoder_layer_classes(read_model_config(cfg.base_model, cfg.data_dir)) if plan.mode == FSDP else None
    cmd = launch_command(cfg, plan, layers)
    print("launching:", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return FinetuneResult(log=read_json(Path(cfg.output_dir) / TRAIN_LOG), adapter_dir=cfg.output_dir)


@locked_stage("04_finetune")
def run(cfg: FinetuneConfig) -> FinetuneResult:
    """Stage 04: one process here, or `accelerate launch` over all GPUs when there are several."""
    prefer_expandable_segments()  # before anything initialises CUDA (the launched processes inherit it)
    if wants_distributed(cfg):
        return launch_distributed(cfg)
    from .train import train

    return train(cfg)
