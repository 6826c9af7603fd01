"""Issue 14: the generation engine vs the current path, same card, same call.

  current : nbutils.decoding.generate_plain - what 05 and 03 ran: HF `generate`, dynamic KV cache, PEFT's
            LoRA layers unmerged (2 extra GEMMs + an add per projection per step)
  engine  : nbutils.decoding's static path - LoRA merged into the weights, StaticCache, decode step compiled
            with torch.compile(mode="reduce-overhead") (CUDA graphs), done-checks every 16 steps
  hf_static: HF `generate(cache_implementation="static")` (its own auto-compile) on the same merged weights: what
            the library alone gives                                                               [--hf-static]

Suites (each prints a table row per variant and writes JSON):
  smol       SmolLM2-135M shapes (random weights), LoRA r=64, batch 64, 512 forced new tokens
  llama3     Llama-3-8B shapes (random weights), bf16 base + LoRA r=64, batch 64, 128 forced new tokens
  llama3-4bit  the same with the base in 4-bit nf4 (bitsandbytes); the engine dequantizes a bf16 copy
  real       the embedded SmolLM2 (real weights; --model folder), Alpaca prompts from the demo corpus, greedy with
             stop markers, base and tuned (a seeded random r=64 adapter): answers of both paths side by side
Forced = min_new_tokens = max_new_tokens (random weights never emit EOS on cue; equal work for both paths).

    python benchmarks/bench_generation_engine.py --suites smol,llama3,llama3-4bit --out /tmp/out
    python benchmarks/bench_generation_engine.py --suites real --model data/models/base/SmolLM2-135M-Instruct
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import LORA_TARGETS as TARGETS  # noqa: E402,F401  (shared helpers of 05's benchmark)
from bench_generation import attach_lora, random_prompts  # noqa: E402,F401
from bench_generation import load_gpu_model as load_folder  # noqa: E402

from nbutils.decoding import EngineSettings, GenerationEngine, GenParams, generate_plain  # noqa: E402
from nbutils.decoding.engine import kv_bytes_per_token  # noqa: E402

SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=2)
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192,
                 bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)


def sync() -> None:
    torch.cuda.synchronize()


def measure_bandwidth(gib: float = 4.0) -> float:
    """Device-to-device copy, bytes read + written per second (median of 10)."""
    n = int(gib * 2**30) // 2
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        sync()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 2 / float(np.median(times[2:]))


class NullTok:
    """The engine's tokenizer needs for random-weight runs (no stop markers there)."""

    def __init__(self, pad: int, eos: int):
        self.pad_token_id, self.eos_token_id = pad, eos

    def decode(self, ids, skip_special_tokens=True):
        return ""


def build_random(arch: dict, folder: Path | None):
    """bf16 random-weight Llama on the GPU; saved to `folder` when given (for a 4-bit load)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if folder is not None and (folder / "config.json").exists():
        return None
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**arch))
    torch.set_default_dtype(prev)
    model.config.torch_dtype = torch.bfloat16
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        return None
    return model.eval()


def weight_bytes(model) -> int:
    """Bytes one decode step must read of the weights as they are stored (4-bit counted as stored)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)


def logical_params(model) -> int:
    """Parameter count with 4-bit packed weights counted at their unpacked size."""
    n = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        qs = getattr(p, "quant_state", None)
        n += int(np.prod(qs.shape)) if qs is not None else p.numel()
    return n


def time_current(model, prompts, gen, pad, stop, batch_size) -> dict:
    generate_plain(model, [prompts[0][:8]], pad, stop, GenParams(max_new_tokens=4, min_new_tokens=4))  # warm-up
    sync()
    t0, n = time.perf_counter(), 0
    for k in range(0, len(prompts), batch_size):
        n += sum(r["n_new_tokens"] for r in generate_plain(model, prompts[k:k + batch_size], pad, stop, gen))
    sync()
    return {"tokens": n, "seconds": time.perf_counter() - t0}


def time_engine(model, tok, prompts, gen, batch_size, compile_: bool = True) -> dict:
    engine = GenerationEngine(model, tok, EngineSettings(path="static", compile=compile_))
    lengths = [len(p) for p in prompts]
    with engine.session(gen, lengths, batch_size) as s:
        with s.adapter(True):
            t0 = time.perf_counter()
            s.decoder = s._static_decoder()
            warm = GenParams(max_new_tokens=8, min_new_tokens=8, stop_markers=())
            for _ in range(2):
                s.decoder.generate([prompts[i] for i in s.batches[0]], s.pad_id, s.stop_ids, warm)
            sync()
            compile_s = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            t0, n = time.perf_counter(), 0
            for b in s.batches:
                n += sum(r["n_new_tokens"] for r in s.generate([prompts[i] for i in b]))
            sync()
            out = {"tokens": n, "seconds": time.perf_counter() - t0, "warmup_compile_s": round(compile_s, 1),
                   "engine": s.describe(), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    return out


def time_hf_static(model, prompts, gen, pad, stop, batch_size) -> dict:
    """HF generate's own static cache + auto-compile, on the merged weights (LoRA taken out)."""
    from nbutils.decoding.lora import DecodeWeights

    g = GenParams(max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens, static_cache=True,
                  stop_markers=())
    with DecodeWeights(model) as w:
        w.use_adapter(True)
        lm = model.get_base_model()
        t0 = time.perf_counter()
        generate_plain(lm, prompts[:batch_size], pad, stop, GenParams(max_new_tokens=8, min_new_tokens=8,
                                                                       static_cache=True))
        sync()
        warm = time.perf_counter() - t0
        t0, n = time.perf_counter(), 0
        for k in range(0, len(prompts), batch_size):
            n += sum(r["n_new_tokens"] for r in generate_plain(lm, prompts[k:k + batch_size], pad, stop, g))
        sync()
    return {"tokens": n, "seconds": time.perf_counter() - t0, "warmup_compile_s": round(warm, 1)}


def limits(model_cfg, wbytes: int, batch: int, mean_ctx: float, bw: float) -> dict:
    """tokens/s at the memory-bandwidth limit: weights only, and weights + the KV cache read each step."""
    kv = kv_bytes_per_token(model_cfg) * batch * mean_ctx
    return {"weights_only": batch * bw / wbytes, "weights_plus_kv": batch * bw / (wbytes + kv)}


def run_random_suite(name: str, a, bw: float) -> dict:
    arch = SMOL if name == "smol" else LLAMA3_8B
    new = a.smol_new if name == "smol" else a.llama_new
    lo, hi = (64, 256) if name == "smol" else (64, 512)
    four_bit = name == "llama3-4bit"
    t = time.perf_counter()
    if not four_bit:
        model = build_random(arch, None)
    else:
        folder = Path("/tmp/llama3-8b-random")
        build_random(arch, folder)
        model = load_folder(folder, four_bit)
    model = attach_lora(model, 64, a.seed)
    load_s = time.perf_counter() - t
    pad, stop = arch["eos_token_id"], [arch["eos_token_id"]]
    tok = NullTok(pad, arch["eos_token_id"])
    prompts = random_prompts(a.batch, lo, hi, arch["vocab_size"], a.seed)
    gen = GenParams(max_new_tokens=new, min_new_tokens=new, stop_markers=())
    res = {"suite": name, "load_s": round(load_s, 1), "batch": a.batch, "new_tokens": new,
           "prompt_len": [lo, hi], "base": "4-bit nf4" if four_bit else "bf16", "lora_r": 64}
    variants = ["current", "engine"] + (["hf_static"] if a.hf_static and name == "smol" else [])
    base_model = model.get_base_model()
    for v in variants:
        try:
            if v == "current":
                r = time_current(model, prompts, gen, pad, stop, a.batch)
            elif v == "engine":
                r = time_engine(model, tok, prompts, gen, a.batch)
            else:
                r = time_hf_static(model, prompts, gen, pad, stop, a.batch)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others' figures
            import traceback

            traceback.print_exc()
            r = {"error": f"{type(e).__name__}: {e}"[:500]}
        if "tokens" in r:
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
        res[v] = r
        print(f"[{name}] {v}: {json.dumps(r)}", flush=True)
    mean_ctx = float(np.mean([len(p) for p in prompts])) + new / 2
    stored, logical = weight_bytes(base_model), 2 * logical_params(base_model)
    res["weight_bytes"] = {"stored": stored, "bf16": logical}
    # the engine reads bf16 weights (a 4-bit base is dequantized into a bf16 copy); current reads them as stored
    res["limit_tokens_per_s"] = {"engine": limits(base_model.config, logical, a.batch, mean_ctx, bw),
                                 "current": limits(base_model.config, stored, a.batch, mean_ctx, bw)}
    for v in variants:
        if "tokens_per_s" in res[v]:
            lim = res["limit_tokens_per_s"]["current" if v == "current" else "engine"]
            res[v]["share_of_limit_weights_only"] = round(res[v]["tokens_per_s"] / lim["weights_only"], 3)
            res[v]["share_of_limit_with_kv"] = round(res[v]["tokens_per_s"] / lim["weights_plus_kv"], 3)
    if "tokens_per_s" in res.get("current", {}) and "tokens_per_s" in res.get("engine", {}):
        res["speedup"] = res["engine"]["tokens_per_s"] / res["current"]["tokens_per_s"]
    del model, base_model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default="smol,llama3,llama3-4bit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--smol-new", type=int, default=512)
    p.add_argument("--llama-new", type=int, default=128)
    p.add_argument("--hf-static", action="store_true")
    p.add_argument("--model", default=None, help="real suite: the provisioned SmolLM2 folder")
    p.add_argument("--real-n", type=int, default=128)
    p.add_argument("--real-new", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "transformers": transformers.__version__, "command": " ".join(sys.argv)}
    try:
        import peft

        meta["peft"] = peft.__version__
        import bitsandbytes

        meta["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    meta["bandwidth_Bps"] = measure_bandwidth()
    print(json.dumps(meta), flush=True)
    results = {"meta": meta}
    for suite in [s for s in a.suites.split(",") if s]:
        if suite == "real":
            from bench_generation_real import run_real_suite  # noqa: E402

            results[suite] = run_real_suite(a, meta["bandwidth_Bps"])
        else:
            results[suite] = run_random_suite(suite, a, meta["bandwidth_Bps"])
        (out / "issue14_generation.json").write_text(json.dumps(results, indent=2))
    print("| suite | current tok/s | engine tok/s | speedup | engine share of limit (weights / +KV) |")
    for suite, r in results.items():
        if suite == "meta" or "engine" not in r:
            continue
        c, e = r.get("current", {}), r.get("engine", {})
        print(f"| {suite} | {c.get('tokens_per_s', float('nan')):.0f} | {e.get('tokens_per_s', float('nan')):.0f} | "
              f"{r.get('speedup', float('nan')):.1f}x | {e.get('share_of_limit_weights_only')} / "
              f"{e.get('share_of_limit_with_kv')} |")


if __name__ == "__main__":
    main()
