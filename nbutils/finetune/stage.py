"""Running stage 04: in this process, or, with several GPUs, the same entry point under `accelerate launch` (DDP,
one process per GPU; a notebook is one process, so it launches and waits)."""
from __future__ import annotations

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


def launch_command(cfg: FinetuneConfig) -> list[str]:
    n = cfg.num_processes or gpu_count()
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "-m", "nbutils.finetune", *cli_args(cfg)]


def launch_distributed(cfg: FinetuneConfig) -> FinetuneResult:
    """Run the training entry point under `accelerate launch` (DDP) and read back the log it wrote."""
    from ..splits import load_split

    load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, seed=cfg.seed)  # made once here, not by every rank
    cmd = launch_command(cfg)
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
