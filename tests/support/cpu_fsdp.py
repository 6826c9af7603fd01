"""Stage 04 under accelerate's FSDP on CPU processes (gloo), for the tests.

accelerate 1.15 turns FSDP on only for accelerators: AcceleratorState sets DistributedType.FSDP inside its
GPU/NPU/XPU branch, and CPU processes under torchrun become MULTI_CPU (DDP over gloo) with the FSDP plugin ignored.
Run as a script under `torch.distributed.run`, this module turns that MULTI_CPU state into FSDP with the plugin
accelerate built from the launch's environment (nothing else changes), so what runs is accelerate's and the
Trainer's own FSDP2 code: fully_shard per decoder layer, sharded checkpoints (torch.distributed.checkpoint), their
resume. `fsdp_env` is that environment, made by accelerate's own launcher code from the flags stage 04 passes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_env(launch_flags: list[str], num_processes: int = 2) -> dict[str, str]:
    """The environment `accelerate launch <launch_flags>` gives each process (accelerate's prepare_multi_gpu_env)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args([*launch_flags, "--num_processes", str(num_processes),
                                               "--main_process_port", str(free_port()), "x.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def run_stage(launch_flags: list[str], stage_args: list[str], num_processes: int = 2, timeout: int = 600,
              fsdp: bool = True) -> subprocess.CompletedProcess:
    """`python -m nbutils.finetune <stage_args>` in `num_processes` CPU processes: under FSDP (the shim), or, with
    fsdp=False, as accelerate runs DDP on CPU (MULTI_CPU over gloo)."""
    env = fsdp_env(launch_flags, num_processes) if fsdp else dict(os.environ)
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true",
               TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
           "--master_port", str(free_port()), str(HERE), *stage_args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def patch_accelerate_for_cpu_fsdp() -> None:
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        patch_accelerate_for_cpu_fsdp()
    from nbutils.finetune.__main__ import main

    sys.exit(main(sys.argv[1:]))
