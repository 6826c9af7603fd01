"""Stage 04 past one GPU (issue 26): FSDP-QLoRA vs DDP vs one GPU, through the stage itself (`python -m
nbutils.finetune` under the `accelerate launch` command stage 04 builds), on random-weight Llama-3 shapes.

Subcommands:
  make-model  a random-weight Llama-3-8B / -70B (or tiny) folder in bf16, written one decoder layer at a time
              straight to safetensors shards (host memory: one layer; disk: 16 GB for 8B, 141 GB for 70B), with a
              tokenizer's files copied in (no hub needed)
  make-data   an original-format arxiv_instruction_dataset.json of synthetic long rows (benchmarks.finetune_speed)
  train       one case per call: the stage on --gpus GPUs in --mode fsdp | ddp | single, for --steps optimizer
              steps; tokens/s from the stage's own train_log.json (all ranks' tokens), peak memory per GPU from
              nvidia-smi (polled every 0.5 s: what each card had reserved) and rank 0's torch peak (allocated);
              the plan's arithmetic is printed and kept, so the estimate can be checked against the measure

The runs (UNRUN: this session had no multi-GPU machine; see benchmarks/RESULTS.md, issue 26):
  # a host with 2+ GPUs of 80 GB and >= 160 GB free disk for the 70B folder (e.g. the H100 x4 kind: 235 GB disk)
  python -m benchmarks.finetune_speed make-data --out /tmp/fsdp-data --rows 2000
  python -m benchmarks.finetune_fsdp make-model --shape llama3-8b --out /tmp/llama3-8b --tokenizer TOKENIZER_DIR
  python -m benchmarks.finetune_fsdp train --model /tmp/llama3-8b --data /tmp/fsdp-data --gpus 1 --mode single
  python -m benchmarks.finetune_fsdp train --model /tmp/llama3-8b --data /tmp/fsdp-data --gpus 2 --mode ddp
  python -m benchmarks.finetune_fsdp train --model /tmp/llama3-8b --data /tmp/fsdp-data --gpus 2 --mode fsdp
  (and the three again with --memory-mode lean: checkpointing everywhere, like for like with FSDP's)
  python -m benchmarks.finetune_fsdp make-model --shape llama3-70b --out /tmp/llama3-70b --tokenizer TOKENIZER_DIR
  python -m benchmarks.finetune_fsdp train --model /tmp/llama3-70b --data /tmp/fsdp-data --gpus 2 --mode fsdp
(TOKENIZER_DIR: any Llama-3-style tokenizer folder; the embedded SmolLM2's works for speed and memory, the vocab
size of the model is 128256 either way. Each case writes --json; the 70B load alone reads 141 GB and quantises on
both GPUs: allow ~10 minutes.)

CPU dry run (one process, tiny model; FSDP on CPU processes needs the tests' shim tests/support/cpu_fsdp.py, which
tests/finetune/test_fsdp.py runs):
  python -m benchmarks.finetune_fsdp make-model --shape tiny --out /tmp/tiny-fsdp --tokenizer data/models/base/SmolLM2-135M-Instruct
  python -m benchmarks.finetune_fsdp train --model /tmp/tiny-fsdp --data /tmp/fsdp-data --gpus 1 --mode single --cpu --steps 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .common import REPO, environment, llama_config, log, write_json

SHAPE_NAMES = ("llama3-8b", "llama3-70b", "tiny")
LLAMA3_70B = {"vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "max_position_embeddings": 8192,
              "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# What the stage trains with here: the full recipe at 4 x 2048 tokens per micro-batch, one micro-batch per step
# (so that a step is short), 4-bit, no eval, no checkpoints.
CASE = {"max_length": 2048, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1,
        "eval_steps": 100000, "save_steps": 100000, "max_eval_samples": 1, "packing": False, "resume": False}


def shape_config(shape: str):
    return llama_config(LLAMA3_70B if shape == "llama3-70b" else shape)


# ------------------------------------------------------------------------------------------------ make-model
def make_model(shape: str, out: str, tokenizer: str | None) -> dict:
    """A random bf16 Llama written one tensor group at a time (N(0, 0.02) weights, unit norms): never the whole
    model in memory, so 70B needs ~1 GiB of host memory and 141 GB of disk."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = shape_config(shape)
    cfg.dtype = torch.bfloat16
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(cfg)
    groups: dict[str, list[tuple[str, tuple]]] = {}
    for name, p in skeleton.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # one matrix, saved as the embeddings
        key = ".".join(name.split(".")[:3]) if ".layers." in name else name.split(".")[-2]
        groups.setdefault(key, []).append((name, tuple(p.shape)))
    gen = torch.Generator().manual_seed(0)
    index, total = {}, 0
    for i, tensors in enumerate(groups.values()):
        file = f"model-{i:05d}.safetensors"
        shard = {}
        for name, shp in tensors:
            t = torch.ones(shp, dtype=torch.bfloat16) if name.endswith("norm.weight") else \
                (torch.randn(shp, generator=gen) * 0.02).to(torch.bfloat16)
            shard[name] = t
            index[name] = file
            total += t.numel() * 2
        save_file(shard, str(out_dir / file), metadata={"format": "pt"})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                        "weight_map": index}, indent=1))
    cfg.save_pretrained(out_dir)
    if tokenizer:
        for f in Path(tokenizer).iterdir():
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja"):
                shutil.copy(f, out_dir / f.name)
    info = {"shape": shape, "out": str(out_dir), "bytes": total, "files": len(groups)}
    log(json.dumps(info))
    return info


# ------------------------------------------------------------------------------------------------ train
class GpuMemoryPoller:
    """Peak memory.used per GPU (MiB) from nvidia-smi every `every` seconds, in a thread."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                idx, used = (int(x) for x in line.split(","))
                self.peak[idx] = max(self.peak.get(idx, 0), used)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)


def stage_config(model: str, data: str, steps: int, mode: str, cpu: bool, memory_mode: str = "auto"):
    from nbutils.finetune import FinetuneConfig

    params = dict(CASE, base_model=model, max_steps=steps, multi_gpu=False if mode == "single" else mode,
                  memory_mode=memory_mode)
    if cpu:
        params.update(max_length=128, per_device_train_batch_size=2, load_in_4bit=False, lora_r=8)
    return FinetuneConfig.from_params(profile="full", data_dir=data, **params)


def train_case(model: str, data: str, gpus: int, mode: str, steps: int, cpu: bool, out_json: str | None,
               memory_mode: str = "auto") -> dict:
    """One case through the stage's own launch: the plan (printed), the command, then the run."""
    from nbutils.finetune import stage
    from nbutils.finetune.fsdp import decoder_layer_classes, read_model_config
    from nbutils.splits import load_split

    cfg = stage_config(model, data, steps, mode, cpu, memory_mode)
    load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, seed=cfg.seed)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    plan = None
    if mode == "single":
        cmd = [sys.executable, "-m", "nbutils.finetune", *stage.cli_args(cfg)]
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    else:
        plan, _ = stage.plan_launch(cfg, world=gpus)
        log(plan.describe())
        layers = decoder_layer_classes(read_model_config(cfg.base_model, cfg.data_dir)) if mode == "fsdp" else None
        cmd = stage.launch_command(cfg, plan, layers)
    log("running:", " ".join(cmd))
    t0 = time.time()
    with GpuMemoryPoller() as poller:
        proc = subprocess.run(cmd, env=env, cwd=REPO)
    wall = time.time() - t0
    result = {"mode": mode, "memory_mode": memory_mode, "gpus": gpus, "steps": steps, "model": model, "returncode": proc.returncode,
              "wall_s": round(wall, 1), "peak_mem_used_mib_per_gpu": poller.peak,
              "plan": plan.describe() if plan else None, "environment": environment()}
    log_path = Path(cfg.output_dir) / "train_log.json"
    if proc.returncode == 0 and log_path.exists():
        tl = json.loads(log_path.read_text())
        entries = [e for e in tl["log"] if e.get("tokens_per_s")]
        steady = entries[1:] or entries  # the first step carries the warm-up
        result.update(tokens_per_s=round(sum(e["tokens_per_s"] for e in steady) / max(1, len(steady)), 1),
                      rank0_peak_gib=tl["summary"]["peak_memory_gib"], load_s=tl.get("load_s"),
                      train_runtime_s=tl.get("train_runtime_s"), runtime=tl.get("runtime"))
    log(json.dumps({k: v for k, v in result.items() if k not in ("environment", "runtime")}, indent=1))
    if out_json:
        write_json(out_json, result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--shape", choices=SHAPE_NAMES, default="llama3-8b")
    m.add_argument("--out", required=True)
    m.add_argument("--tokenizer", default=None, help="folder whose tokenizer files are copied in")
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True, help="a data_dir holding arxiv_instruction_dataset.json")
    t.add_argument("--gpus", type=int, default=2)
    t.add_argument("--mode", choices=("fsdp", "ddp", "single"), required=True)
    t.add_argument("--steps", type=int, default=12)
    t.add_argument("--memory-mode", default="auto", choices=("auto", "fast", "lean"),
                   help="the stage's memory_mode (lean: checkpointing in every mode, for a like-for-like comparison)")
    t.add_argument("--cpu", action="store_true", help="dry run on the CPU (tiny model, no 4-bit)")
    t.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.cmd == "train" and a.cpu and a.mode != "single":
        p.error("--cpu runs --mode single only (FSDP on CPU processes needs the tests' shim: tests/support/cpu_fsdp.py)")
    if a.cmd == "make-model":
        make_model(a.shape, a.out, a.tokenizer)
        return 0
    result = train_case(a.model, a.data, a.gpus, a.mode, a.steps, a.cpu, a.json, a.memory_mode)
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
