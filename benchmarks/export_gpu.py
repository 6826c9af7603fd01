"""Issue 22 on a GPU: merge + GGUF q8_0 of a Llama-3-8B-shaped model (random weights, no hub needed), wall time
and peak memory. `python -m benchmarks.export_gpu --tokenizer DIR [--out figures.json]`

    build   LlamaForCausalLM from Llama-3-8B's config (vocab 128256, hidden 4096, 14336, 32 layers, 32 heads, 8 KV
            heads, rope_theta 5e5), random bf16 weights made on the GPU, saved as 5 GB safetensors shards; a LoRA
            adapter r=64 alpha=16 on the seven projections (random A and B, the original recipe's shapes) written
            as PEFT saves it, with a train_log.json; the tokenizer files copied from --tokenizer (any byte-level BPE
            tokenizer: the GGUF's vocabulary is padded to the model's 128256 rows as llama.cpp's converter pads)
    export  nbutils.export.run(gguf_types=["q8_0"]) in a fresh process: the streaming merge (each adapted weight
            updated on the GPU) and the q8_0 GGUF (quantised on the GPU); wall time per artefact, the process's
            peak GPU memory (torch's allocated peak) and peak RSS

Targets (issue 22): <= 5 minutes, and no more GPU memory than training used (RESULTS.md: 7.68 GiB for the leanest
stage recipe, 10.5 GiB for the original's)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def lora_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(out, in) of each adapted projection of one layer."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q, kv, h, i = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.hidden_size, cfg.intermediate_size
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def build(work: Path, shape: str, tokenizer: Path, r: int) -> dict:
    import torch
    from safetensors.torch import save_file

    from .common import build_random_model, llama_config

    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = llama_config(shape)
    base = work / "base" / f"random-{shape}"
    shutil.rmtree(base, ignore_errors=True)
    build_random_model(cfg, device, base)          # bf16 on CUDA, 5 GB shards
    for f in TOKENIZER_FILES:
        if (tokenizer / f).exists():
            shutil.copy(tokenizer / f, base / f)
    adapter = work / "models" / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    adapter.mkdir(parents=True)
    g = torch.Generator(device=device).manual_seed(1)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for name, (out_f, in_f) in lora_shapes(cfg).items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(r, in_f, generator=g, device=device) / in_f ** 0.5).cpu()
            tensors[f"{key}.lora_B.weight"] = (torch.randn(out_f, r, generator=g, device=device) * 0.01).cpu()
    save_file(tensors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16, "lora_dropout": 0.1,
        "target_modules": TARGETS, "bias": "none", "base_model_name_or_path": str(base), "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "fan_in_fan_out": False}))
    for f in TOKENIZER_FILES:
        if (tokenizer / f).exists():
            shutil.copy(tokenizer / f, adapter / f)
    (adapter / "train_log.json").write_text(json.dumps({
        "base_model": str(base), "base_model_path": str(base),
        "config": {"template": "alpaca", "lora_r": r, "lora_alpha": 16, "load_in_4bit": True},
        "runtime": {"load_in_4bit": True}}))
    return {"build_s": round(time.time() - t0, 1), "lora_tensors": len(tensors),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def export(work: Path) -> dict:
    import resource

    import torch

    from nbutils.export import ExportConfig, run

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = run(ExportConfig.from_params(profile="full", data_dir=str(work), gguf_types=["q8_0"]), verbose=True)
    wall = time.time() - t0
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"export_s": round(wall, 1),
            "artifacts": {a["name"]: {"s": a["seconds"], "GB": round(a["bytes"] / 1e9, 2), "status": a["status"]}
                          for a in result.artifacts},
            "peak_gpu_gib": None if peak_gpu is None else round(peak_gpu, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "merge_method": next((a.get("method") for a in result.artifacts if a["name"] == "merged"), None),
            "notes": result.notes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("all", "build", "export"), default="all")
    p.add_argument("--shape", choices=("llama3-8b", "smollm2-135m", "tiny"), default="llama3-8b")
    p.add_argument("--tokenizer", default="data/models/base/SmolLM2-135M-Instruct",
                   help="folder with a byte-level BPE tokenizer.json")
    p.add_argument("--work", default="/tmp/export-gpu")
    p.add_argument("--lora_r", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage == "build":
        print(json.dumps(build(work, args.shape, Path(args.tokenizer), args.lora_r)))
        return 0
    if args.stage == "export":
        print(json.dumps(export(work)))
        return 0
    from .common import environment

    figures = {"shape": args.shape, "lora_r": args.lora_r, "environment": environment(("transformers", "peft", "gguf"))}
    for stage in ("build", "export"):   # separate processes: the export's peaks are its own
        proc = subprocess.run([sys.executable, "-m", "benchmarks.export_gpu", "--stage", stage, "--shape", args.shape,
                               "--tokenizer", args.tokenizer, "--work", str(work), "--lora_r", str(args.lora_r)],
                              capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-3000:])
        if proc.returncode:
            print(proc.stdout[-3000:])
            return proc.returncode
        figures[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
