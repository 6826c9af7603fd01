"""Generation speed: stage 05's generation and the shared decoding engine, each against what came before it, same
card, same call. One script, four modes (`python -m benchmarks.generation_speed MODE --help`):

  loop      (issue 8) the original project's loop vs 05's batching, same model:
              original : one example per `generate` call, sampled (temperature 0.5, top_p 0.5), the tuned model as
                         the original loaded it (4-bit base + LoRA adapter on a GPU; fp32 + adapter on CPU)
              ours     : nbutils.decoding.generate_plain: prompts sorted by length, left-padded batches, greedy,
                         bf16 base with the same adapter attached (GPU; fp32 on CPU)
              ours_4bit: the same batching on the original's 4-bit model (what batching alone buys)   [GPU, optional]
              ours_static: ours + a static KV cache (cache_implementation="static")                  [GPU, optional]
            CPU: the embedded SmolLM2-135M-Instruct; GPU (--llama3-random): Llama-3-8B shapes, random weights.
  evaluate  (issue 8) the same comparison on a model folder and its tokenizer through nbutils.evaluate's
            generate_batch, 4-bit and bf16, at several batch sizes (run_gpu_bench.sh's `gen` phase)
  engine    (issue 14) the decoding engine vs the path before it; suites (each a table row per variant, JSON):
              smol         SmolLM2-135M shapes (random weights), LoRA r=64, batch 64, 512 forced new tokens
              llama3       Llama-3-8B shapes (random weights), bf16 base + LoRA r=64, batch 64, 128 forced new tokens
              llama3-4bit  the same with the base in 4-bit nf4 (bitsandbytes); the engine dequantizes a bf16 copy
              real         the embedded SmolLM2 (real weights; --model folder), Alpaca prompts from the demo corpus,
                           greedy with stop markers, base and tuned (a seeded random r=64 adapter): answers of both
                           paths side by side; and 03's local backend (benchmarks.generate_local)
            variants: current (nbutils.decoding.generate_plain: HF `generate`, dynamic KV cache, PEFT's LoRA
            layers unmerged), engine (LoRA merged, StaticCache, decode step compiled with CUDA graphs, done-checks
            every 16 steps), hf_static (HF `generate(cache_implementation="static")` on the merged weights; --hf-static)
  summarize / fp32check   CPU-side analysis of the `engine --suites real` JSON: identical answers, ROUGE-L, where
            answers diverge; and which token an fp32 forward prefers where the two paths' base answers differ

Forced = min_new_tokens = max_new_tokens: random weights never emit EOS on cue, and equal work keeps the comparison
fair. tokens/s = generated tokens / wall seconds, after a warm-up call per variant.

    .venv/bin/python -m benchmarks.generation_speed loop --threads 1          # CPU, embedded SmolLM2 (2 cores)
    python -m benchmarks.generation_speed loop --llama3-random --json /tmp/bench_generation.json           # GPU
    python -m benchmarks.generation_speed evaluate --model /tmp/llama3-8b-random --json /tmp/gen.json     # GPU
    python -m benchmarks.generation_speed engine --suites smol,llama3,llama3-4bit --out /tmp/out           # GPU
    python -m benchmarks.generation_speed engine --suites real --model data/models/base/SmolLM2-135M-Instruct
    python -m benchmarks.generation_speed summarize RAW.json OUT.json
    python -m benchmarks.generation_speed fp32check RAW.json MODEL_FOLDER OUT.json   (adds to OUT.json)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nbutils.decoding import (
    EngineSettings,
    GenerationEngine,
    GenParams,
    clean_answer,
    cut_at_stop,
    eos_ids,
    generate_plain,
    length_sorted_batches,
)
from nbutils.decoding.engine import kv_bytes_per_token

from .common import (
    LLAMA3_8B,
    SMOLLM2_135M,
    attach_lora,
    build_random_model,
    environment,
    free_memory,
    load_gpu_model,
    log,
    measure_bandwidth,
    random_prompts,
    short_samples,
    sync,
    write_json,
)
from .common import demo_windows as windows
from .generate_local import run_local

LLAMA3_FOLDER = Path(tempfile.gettempdir()) / "llama3-8b-random"   # built once, shared by the modes


# ------------------------------------------------------------------------------------------------ loop (issue 8)
def time_loop(model, prompts, pad_id, stop, max_new: int, seed: int) -> dict:
    """The original: one prompt per generate call, sampled."""
    gen = GenParams(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=True, temperature=0.5, top_p=0.5)
    torch.manual_seed(seed)
    generate_plain(model, [prompts[0][:16]], pad_id, stop, GenParams(max_new_tokens=4, min_new_tokens=4,
                                                                     do_sample=True))  # warm-up
    sync()
    t0, n = time.perf_counter(), 0
    for p in prompts:
        n += generate_plain(model, [p], pad_id, stop, gen)[0]["n_new_tokens"]
    sync()
    return {"tokens": n, "seconds": time.perf_counter() - t0, "prompts": len(prompts), "batch_size": 1}


def time_batched(model, prompts, pad_id, stop, max_new: int, batch_size: int, static: bool = False) -> dict:
    """Ours: length-sorted, left-padded greedy batches through nbutils.decoding.generate_plain."""
    gen = GenParams(max_new_tokens=max_new, min_new_tokens=max_new, static_cache=static)
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    generate_plain(model, [prompts[i] for i in batches[0]], pad_id, stop, gen)  # warm-up (and compile if static)
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0, n = time.perf_counter(), 0
    for b in batches:
        n += sum(r["n_new_tokens"] for r in generate_plain(model, [prompts[i] for i in b], pad_id, stop, gen))
    sync()
    out = {"tokens": n, "seconds": time.perf_counter() - t0, "prompts": len(prompts), "batch_size": batch_size}
    if torch.cuda.is_available():
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def loop_defaults(a) -> None:
    """Fill the loop mode's unset arguments: GPU (--llama3-random) or CPU sizes."""
    gpu = a.llama3_random
    defaults = dict(variants="original,ours_4bit,ours" if gpu else "original,ours", n_prompts=256 if gpu else 24,
                    original_n=6 if gpu else 3, max_new_tokens=128 if gpu else 32, batch_size=128 if gpu else 8,
                    min_prompt_len=64 if gpu else 32, max_prompt_len=512 if gpu else 160, lora_r=64 if gpu else 8)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)


def run_loop(a) -> dict:
    loop_defaults(a)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if a.threads:
        torch.set_num_threads(a.threads)
    results: dict = {"args": vars(a)}
    if a.llama3_random:
        assert torch.cuda.is_available(), "--llama3-random needs a CUDA GPU"
        folder = LLAMA3_FOLDER
        t = time.time()
        build_random_model("llama3-8b", "cuda", folder)
        print(f"random Llama-3-8B at {folder} ({time.time() - t:.0f} s)", flush=True)
        vocab, pad_id, stop = LLAMA3_8B["vocab_size"], LLAMA3_8B["eos_token_id"], [LLAMA3_8B["eos_token_id"]]
        results["device"] = torch.cuda.get_device_name()
    else:
        from nbutils.io import PROJECT_ROOT
        from nbutils.models import provision_embedded_model

        folder = Path(a.model) if a.model else provision_embedded_model(PROJECT_ROOT / "data", verbose=False)
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(folder)
        vocab, pad_id = c.vocab_size, c.eos_token_id
        stop = [c.eos_token_id]
        results["device"] = f"CPU ({torch.get_num_threads()} threads)"
    prompts = random_prompts(a.n_prompts, a.min_prompt_len, a.max_prompt_len, vocab, a.seed)
    loop_prompts = prompts[:a.original_n]
    print(f"{results['device']}: {len(prompts)} prompts of {a.min_prompt_len}-{a.max_prompt_len} tokens, "
          f"{a.max_new_tokens} new tokens each; original loop on the first {len(loop_prompts)}", flush=True)

    def model_for(four_bit: bool):
        if a.llama3_random:
            return attach_lora(load_gpu_model(folder, four_bit), a.lora_r, a.seed)
        from transformers import AutoModelForCausalLM

        return attach_lora(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), a.lora_r, a.seed)

    # group variants by the weights they need, so each model is loaded once
    four_bit_ok = a.llama3_random and importlib.util.find_spec("bitsandbytes") is not None
    if a.llama3_random and not four_bit_ok:
        print("bitsandbytes is not installed: the original loop runs on bf16 weights instead of 4-bit (a faster, "
              "so conservative, baseline) and ours_4bit is skipped", flush=True)
    four_bit_variants = ("original", "ours_4bit") if four_bit_ok else ()
    groups = {False: [v for v in variants if v not in four_bit_variants and v != "ours_4bit"],
              True: [v for v in variants if v in four_bit_variants]}
    for four_bit, vs in groups.items():
        if not vs:
            continue
        model = model_for(four_bit)
        for v in vs:
            if v == "original":
                r = time_loop(model, loop_prompts, pad_id, stop, a.max_new_tokens, a.seed)
            else:
                r = time_batched(model, prompts, pad_id, stop, a.max_new_tokens, a.batch_size,
                                 static=v == "ours_static")
            r["weights"] = ("4-bit nf4" if four_bit else ("bf16" if a.llama3_random else "fp32")) + " + LoRA attached"
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            results[v] = r
            print(f"{v:>12}: {r['tokens']:>7} tokens in {r['seconds']:7.1f} s = {r['tokens_per_s']:9.1f} tokens/s "
                  f"({r['weights']}, batch {r['batch_size']})", flush=True)
        del model
        free_memory()
    if "original" in results:
        base = results["original"]["tokens_per_s"]
        for v in variants:
            if v != "original" and v in results:
                results[v]["speedup_vs_original"] = results[v]["tokens_per_s"] / base
                print(f"{v} / original = {results[v]['speedup_vs_original']:.1f}x")
    if a.json:
        write_json(a.json, results, indent=2)
    return results


# ------------------------------------------------------------------------------------------------ evaluate (issue 8)
def run_evaluate(args) -> dict:
    """The original's loop (one prompt per generate, sampled, 4-bit) vs stage 05's batched greedy
    (nbutils.evaluate.generate_batch; bf16 on a >= 40 GiB card as the stage's load_in_4bit=None chooses).
    Both with a LoRA adapter attached (r=64, 7 projections) and min_new_tokens = max_new_tokens so both do
    the same number of tokens per example."""
    import torch
    from peft import LoraConfig, get_peft_model

    from nbutils.evaluate import GenParams, generate_batch
    from nbutils.finetune.config import LORA_TARGETS
    from nbutils.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(args.tokenizer or args.model, args.work_dir)
    vocab = min(len(tok), 49152)
    n_new = args.new_tokens
    rows = short_samples(max(args.batch_sizes + [args.loop_examples]), 100, 300, vocab, seed=3)["input_ids"]
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS)
    results = []

    def timed(model, batch, gen):
        sync()
        t0 = time.perf_counter()
        out = generate_batch(model, batch, tok.pad_token_id or 0, [tok.eos_token_id], gen)
        sync()
        return time.perf_counter() - t0, sum(r["n_new_tokens"] for r in out)

    for four_bit in ([True, False] if not args.only_4bit else [True]):
        model = get_peft_model(load_causal_lm(args.model, args.work_dir, load_in_4bit=four_bit), lora).eval()
        torch.cuda.reset_peak_memory_stats()
        label = "4-bit" if four_bit else "bf16"
        if four_bit:
            gen = GenParams(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=True, temperature=0.5, top_p=0.5)
            timed(model, rows[:1], GenParams(max_new_tokens=8, min_new_tokens=8, do_sample=True))  # warm-up
            secs, toks = 0.0, 0
            for i in range(args.loop_examples):
                torch.manual_seed(i)
                s, t = timed(model, rows[i:i + 1], gen)
                secs, toks = secs + s, toks + t
            results.append({"mode": "original loop (1 example/generate, sampled)", "weights": label, "batch": 1,
                            "examples": args.loop_examples, "new_tokens": toks, "seconds": round(secs, 2),
                            "tokens_per_s": round(toks / secs, 1),
                            "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
            log(results[-1])
        greedy = GenParams(max_new_tokens=n_new, min_new_tokens=n_new)
        for bs in args.batch_sizes:
            if four_bit and bs > 64:
                continue
            timed(model, rows[:bs], GenParams(max_new_tokens=4, min_new_tokens=4))  # warm-up at this shape
            torch.cuda.reset_peak_memory_stats()
            secs, toks = timed(model, rows[:bs], greedy)
            results.append({"mode": "stage 05 batched greedy", "weights": label, "batch": bs, "examples": bs,
                            "new_tokens": toks, "seconds": round(secs, 2), "tokens_per_s": round(toks / secs, 1),
                            "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
            log(results[-1])
        del model
        free_memory()
    ref = results[0]["tokens_per_s"]
    log("\n| mode | weights | batch | new tokens | s | tok/s | x original loop | peak GiB |")
    log("|---|---|---|---|---|---|---|---|")
    for r in results:
        log(f"| {r['mode']} | {r['weights']} | {r['batch']} | {r['new_tokens']} | {r['seconds']} | "
            f"{r['tokens_per_s']:,} | {r['tokens_per_s'] / ref:.1f} | {r['peak_alloc_gib']} |")
    if args.json:
        write_json(args.json, {"kind": "gen", "env": environment(), "args": vars(args), "results": results})
    return {"results": results}


# ------------------------------------------------------------------------------------------------ engine (issue 14)
class NullTok:
    """The engine's tokenizer needs for random-weight runs (no stop markers there)."""

    def __init__(self, pad: int, eos: int):
        self.pad_token_id, self.eos_token_id = pad, eos

    def decode(self, ids, skip_special_tokens=True):
        return ""




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
    arch = SMOLLM2_135M if name == "smol" else LLAMA3_8B
    new = a.smol_new if name == "smol" else a.llama_new
    lo, hi = (64, 256) if name == "smol" else (64, 512)
    four_bit = name == "llama3-4bit"
    t = time.perf_counter()
    if not four_bit:
        model = build_random_model(arch, "cuda")
    else:
        build_random_model(arch, "cuda", LLAMA3_FOLDER)
        model = load_gpu_model(LLAMA3_FOLDER, four_bit)
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
    free_memory()
    return res


def run_engine(a) -> dict:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
            **environment(("transformers", "peft", "bitsandbytes"))}
    meta["bandwidth_Bps"] = measure_bandwidth()
    print(json.dumps(meta), flush=True)
    results = {"meta": meta}
    for suite in [s for s in a.suites.split(",") if s]:
        if suite == "real":
            results[suite] = run_real_suite(a, meta["bandwidth_Bps"])
        else:
            results[suite] = run_random_suite(suite, a, meta["bandwidth_Bps"])
        write_json(out / "issue14_generation.json", results, indent=2)
    print("| suite | current tok/s | engine tok/s | speedup | engine share of limit (weights / +KV) |")
    for suite, r in results.items():
        if suite == "meta" or "engine" not in r:
            continue
        c, e = r.get("current", {}), r.get("engine", {})
        print(f"| {suite} | {c.get('tokens_per_s', float('nan')):.0f} | {e.get('tokens_per_s', float('nan')):.0f} | "
              f"{r.get('speedup', float('nan')):.1f}x | {e.get('share_of_limit_weights_only')} / "
              f"{e.get('share_of_limit_with_kv')} |")
    return results


# ------------------------------------------------------------------------------------------- real weights (issue 14)
INSTRUCTIONS = ("Summarize the following passage in one or two sentences.",
                "What is the main point of this passage?",
                "Explain the following text to a student.",
                "Write one question a reader could ask about this passage, then answer it.")


def first_sentence(text: str) -> str:
    m = re.search(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()


def answers(tok, rows, markers) -> list[dict]:
    out = []
    for r in rows:
        raw = tok.decode(r["ids"], skip_special_tokens=True)
        text = clean_answer(raw, markers)
        out.append({"text": text, "ids_up_to_marker": ids_before_marker(tok, r["ids"], markers),
                    "n_new_tokens": r["n_new_tokens"]})
    return out


def ids_before_marker(tok, ids, markers) -> list[int]:
    """The answer's token ids up to the first stop marker (what both paths must agree on)."""
    for k in range(1, len(ids) + 1):
        if any(m in tok.decode(ids[:k], skip_special_tokens=True) for m in markers):
            return list(ids[:k])
    return list(ids)


def run_eval(model, tok, n: int, new: int, batch: int) -> dict:
    from nbutils.templates import ALPACA, build_prompt

    wins = windows()[:n]
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)], w, ALPACA, tok) for i, w in enumerate(wins)]
    ids = [tok(p)["input_ids"] for p in prompts]
    refs = [first_sentence(w) for w in wins]
    gen = GenParams(max_new_tokens=new)
    pad, stop = tok.pad_token_id, eos_ids(tok, model)   # 05's stop ids (the generation config's eos included)
    res: dict = {"n": len(prompts), "max_new_tokens": new, "batch": batch, "references": refs}
    engine = GenerationEngine(model, tok, EngineSettings())
    order = length_sorted_batches([len(x) for x in ids], batch)
    for variant in ("base", "tuned"):
        # current path
        rows: list = [None] * len(ids)
        ctx = model.disable_adapter() if variant == "base" else torch.inference_mode()
        with ctx:
            generate_plain(model, [ids[0]], pad, stop, GenParams(max_new_tokens=4), tokenizer=tok)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in order:
                for i, r in zip(b, generate_plain(model, [ids[i] for i in b], pad, stop, gen, tokenizer=tok)):
                    rows[i] = r
            torch.cuda.synchronize()
        cur_s = time.perf_counter() - t0
        res[f"current_{variant}"] = {"seconds": cur_s, "tokens": sum(r["n_new_tokens"] for r in rows),
                                     "answers": answers(tok, rows, gen.stop_markers)}
        # engine: first pass compiles (timed separately), second pass is timed
        with engine.session(gen, [len(x) for x in ids], batch) as s:
            with s.adapter(variant == "tuned"):
                t0 = time.perf_counter()
                s.generate([ids[i] for i in s.batches[-1]])
                torch.cuda.synchronize()
                warm = time.perf_counter() - t0
                erows: list = [None] * len(ids)
                t0 = time.perf_counter()
                for b in s.batches:
                    for i, r in zip(b, s.generate([ids[i] for i in b])):
                        erows[i] = r
                torch.cuda.synchronize()
                eng_s = time.perf_counter() - t0
                res[f"engine_{variant}"] = {"seconds": eng_s, "warmup_s": round(warm, 1),
                                            "tokens": sum(r["n_new_tokens"] for r in erows),
                                            "answers": answers(tok, erows, gen.stop_markers),
                                            "engine": s.describe(), "key": s.key()}
        for k in (f"current_{variant}", f"engine_{variant}"):
            res[k]["tokens_per_s"] = res[k]["tokens"] / res[k]["seconds"]
        same = sum(a["ids_up_to_marker"] == b["ids_up_to_marker"]
                   for a, b in zip(res[f"current_{variant}"]["answers"], res[f"engine_{variant}"]["answers"]))
        res[f"identical_{variant}"] = same / len(ids)
        print(f"[real {variant}] current {res[f'current_{variant}']['tokens_per_s']:.0f} tok/s, engine "
              f"{res[f'engine_{variant}']['tokens_per_s']:.0f} tok/s, identical {same}/{len(ids)}", flush=True)
    return res



def run_real_suite(a, bw: float) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = a.model
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                attn_implementation="sdpa").eval()
    model = attach_lora(base, 64, a.seed, scale=0.01)
    res = {"model": str(folder), "eval": run_eval(model, tok, a.real_n, a.real_new, a.batch)}
    del model, base
    torch.cuda.empty_cache()
    try:
        res["local"] = run_local(folder, a.real_n, a.batch)
    except Exception as e:  # noqa: BLE001 - keep the eval figures
        import traceback

        traceback.print_exc()
        res["local"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return res


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two answers differ (None: identical)."""
    if a == b:
        return None
    return next((j for j, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))


def summarize(raw_json: str, out_json: str, stop_ids: tuple[int, ...] = (2,)) -> dict:
    """From the GPU call's JSON: per variant the share identical token for token, mean ROUGE-L (against the first
    sentence of each passage, the same scorer as 05: rouge_score with stemming) of both paths and its difference,
    ROUGE-L between the paired answers, where answers first diverge; written compact (texts, no token ids).
    Answers are compared up to 05's stop ids (`stop_ids`: SmolLM2's generation-config eos, <|im_end|> = 2): the run
    of 2026-12-01 gave the current path only the tokenizer's eos/pad, so it wrote on past <|im_end|> where 05 stops."""
    from rouge_score import rouge_scorer

    full = json.loads(Path(raw_json).read_text())
    real = full["real"]
    e = real["eval"]
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out: dict = {"meta": full["meta"], "n": e["n"], "max_new_tokens": e["max_new_tokens"], "batch": e["batch"]}
    for v in ("base", "tuned"):
        cur, eng = e[f"current_{v}"], e[f"engine_{v}"]
        rc = [sc.score(r, a["text"])["rougeL"].fmeasure for r, a in zip(e["references"], cur["answers"])]
        rg = [sc.score(r, a["text"])["rougeL"].fmeasure for r, a in zip(e["references"], eng["answers"])]
        pair = [sc.score(a["text"], b["text"])["rougeL"].fmeasure for a, b in zip(cur["answers"], eng["answers"])]
        div = [first_divergence(cut_at_stop(a["ids_up_to_marker"], stop_ids)[0],
                                cut_at_stop(b["ids_up_to_marker"], stop_ids)[0])
               for a, b in zip(cur["answers"], eng["answers"])]
        diverged = [d for d in div if d is not None]
        out[v] = {"current_tokens_per_s": cur["tokens_per_s"], "engine_tokens_per_s": eng["tokens_per_s"],
                  "speedup": eng["tokens_per_s"] / cur["tokens_per_s"], "engine": eng["engine"],
                  "engine_key": eng["key"], "identical_token_for_token": float(np.mean([d is None for d in div])),
                  "identical_text": float(np.mean([a["text"] == b["text"]
                                                   for a, b in zip(cur["answers"], eng["answers"])])),
                  "rougeL_current": float(np.mean(rc)), "rougeL_engine": float(np.mean(rg)),
                  "rougeL_difference": float(np.mean(rg) - np.mean(rc)),
                  "rougeL_between_paired_answers": float(np.mean(pair)),
                  "first_divergence_token_median": float(np.median(diverged)) if diverged else None,
                  "first_divergence_token_quartiles": [float(q) for q in np.percentile(diverged, [25, 75])]
                  if diverged else None,
                  "rows": [{"current": a["text"], "engine": b["text"], "first_divergence": d}
                           for a, b, d in zip(cur["answers"], eng["answers"], div)]}
    loc = real.get("local", {})
    out["local"] = {k: v for k, v in loc.items() if "texts" not in k}
    Path(out_json).write_text(json.dumps(out, indent=1))
    return out


def fp32_check(raw_json: str, folder: str, stop_ids: tuple[int, ...] = (2,)) -> dict:
    """Where the base answers of the two paths first differ (no adapter: kernels alone), the token an fp32 forward
    of the real model on the CPU prefers, and the fp32 logit margin between the two tokens (near 0: a tie that
    bf16 rounding decides)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbutils.templates import ALPACA, build_prompt

    e = json.loads(Path(raw_json).read_text())["real"]["eval"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)], w, ALPACA, tok)
               for i, w in enumerate(windows()[:e["n"]])]
    rows = []
    for i, (a, b) in enumerate(zip(e["current_base"]["answers"], e["engine_base"]["answers"])):
        x, y = cut_at_stop(a["ids_up_to_marker"], stop_ids)[0], cut_at_stop(b["ids_up_to_marker"], stop_ids)[0]
        k = first_divergence(x, y)
        if k is None or k >= min(len(x), len(y)):
            continue
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([tok(prompts[i])["input_ids"] + x[:k]])).logits[0, -1]
        rows.append({"row": i, "token": k, "fp32_pick": "current" if int(logits.argmax()) == x[k] else
                     "engine" if int(logits.argmax()) == y[k] else "neither",
                     "margin": float(logits[x[k]] - logits[y[k]])})
    picks = [r["fp32_pick"] for r in rows]
    return {"diverging": len(rows), "fp32_picks_current": picks.count("current"),
            "fp32_picks_engine": picks.count("engine"), "fp32_picks_neither": picks.count("neither"),
            "abs_margin_median": float(np.median([abs(r["margin"]) for r in rows])) if rows else None,
            "abs_margin_max": float(max(abs(r["margin"]) for r in rows)) if rows else None, "rows": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    lo = sub.add_parser("loop", help="the original's one-at-a-time loop vs 05's batching")
    lo.add_argument("--llama3-random", action="store_true", help="Llama-3-8B shapes, random weights, on CUDA")
    lo.add_argument("--model", default=None, help="CPU mode: model folder (default: the embedded SmolLM2)")
    lo.add_argument("--variants", default=None, help="comma list of original,ours,ours_4bit,ours_static "
                    "(default: GPU original,ours_4bit,ours; CPU original,ours)")
    lo.add_argument("--n-prompts", type=int, default=None, help="prompts for the batched variants")
    lo.add_argument("--original-n", type=int, default=None, help="prompts for the one-at-a-time loop")
    lo.add_argument("--max-new-tokens", type=int, default=None)
    lo.add_argument("--batch-size", type=int, default=None)
    lo.add_argument("--min-prompt-len", type=int, default=None)
    lo.add_argument("--max-prompt-len", type=int, default=None)
    lo.add_argument("--lora-r", type=int, default=None, help="adapter rank (the original: 64 on all 7 projections)")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is much "
                    "faster when other jobs share the cores)")
    lo.add_argument("--json", default=None, help="also write the results here")
    ev = sub.add_parser("evaluate", help="the same through nbutils.evaluate on a model folder, 4-bit and bf16 (GPU)")
    ev.add_argument("--model", required=True)
    ev.add_argument("--tokenizer", default=None)
    ev.add_argument("--work-dir", default="/tmp/bench_finetune_gpu")
    ev.add_argument("--json", default=None)
    ev.add_argument("--new-tokens", type=int, default=128)
    ev.add_argument("--loop-examples", type=int, default=3)
    ev.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 128])
    ev.add_argument("--only-4bit", action="store_true")
    en = sub.add_parser("engine", help="the decoding engine vs the path before it (GPU)")
    en.add_argument("--suites", default="smol,llama3,llama3-4bit")
    en.add_argument("--batch", type=int, default=64)
    en.add_argument("--smol-new", type=int, default=512)
    en.add_argument("--llama-new", type=int, default=128)
    en.add_argument("--hf-static", action="store_true")
    en.add_argument("--model", default=None, help="real suite: the provisioned SmolLM2 folder")
    en.add_argument("--real-n", type=int, default=128)
    en.add_argument("--real-new", type=int, default=512)
    en.add_argument("--seed", type=int, default=0)
    en.add_argument("--out", default=".")
    su = sub.add_parser("summarize", help="from an `engine --suites real` JSON: identical answers, ROUGE-L")
    su.add_argument("raw_json")
    su.add_argument("out_json")
    fp = sub.add_parser("fp32check", help="where the base answers differ, the token an fp32 CPU forward prefers")
    fp.add_argument("raw_json")
    fp.add_argument("model_folder")
    fp.add_argument("out_json", help="an existing summarize output; the check is added to it")
    a = p.parse_args(argv)
    if a.mode == "loop":
        return run_loop(a)
    if a.mode == "evaluate":
        return run_evaluate(a)
    if a.mode == "engine":
        return run_engine(a)
    if a.mode == "summarize":
        s = summarize(a.raw_json, a.out_json)
        for v in ("base", "tuned"):
            print(v, {k: x for k, x in s[v].items() if k != "rows"})
        print("local", s["local"])
        return s
    check = fp32_check(a.raw_json, a.model_folder)
    out = json.loads(Path(a.out_json).read_text())
    out["fp32_check_base"] = check
    Path(a.out_json).write_text(json.dumps(out, indent=1))
    print({k: v for k, v in check.items() if k != "rows"})
    return check


if __name__ == "__main__":
    main()
