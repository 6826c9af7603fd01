"""05_evaluate generation benchmark: the original project's loop vs nbutils.evaluate's batching, same model, one run.

  original : one example per `generate` call, sampled (temperature 0.5, top_p 0.5), the tuned model as the original
             loaded it (4-bit base + LoRA adapter on a GPU; fp32 + adapter on CPU)
  ours     : nbutils.evaluate.generate_batch: prompts sorted by length, left-padded batches, greedy, bf16 base with
             the same adapter attached (GPU; fp32 on CPU)
  ours_4bit: the same batching on the original's 4-bit model (what batching alone buys)       [GPU, optional]
  ours_static: ours + a static KV cache (cache_implementation="static")                       [GPU, optional]

Every variant generates exactly max_new_tokens per prompt (min_new_tokens = max_new_tokens): random weights never
emit EOS on cue, and equal work keeps the comparison fair. Tokens are counted from the returned rows (up to EOS;
none comes). tokens/s = generated tokens / wall seconds, after a warm-up call per variant.

    # CPU, the embedded SmolLM2-135M-Instruct (2 cores; --threads 1 when other jobs share them):
    .venv/bin/python benchmarks/bench_generation.py --threads 1
    # GPU, Llama-3-8B shapes with random weights (needs bitsandbytes for the 4-bit original):
    python benchmarks/bench_generation.py --llama3-random --json /tmp/bench_generation.json
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nbutils.decoding import GenParams, length_sorted_batches  # noqa: E402
from nbutils.decoding import generate_plain as generate_batch  # noqa: E402

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192,
                 bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama3-random", action="store_true", help="Llama-3-8B shapes, random weights, on CUDA")
    p.add_argument("--model", default=None, help="CPU mode: model folder (default: the embedded SmolLM2)")
    p.add_argument("--variants", default=None, help="comma list of original,ours,ours_4bit,ours_static "
                   "(default: GPU original,ours_4bit,ours; CPU original,ours)")
    p.add_argument("--n-prompts", type=int, default=None, help="prompts for the batched variants")
    p.add_argument("--original-n", type=int, default=None, help="prompts for the one-at-a-time loop")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--min-prompt-len", type=int, default=None)
    p.add_argument("--max-prompt-len", type=int, default=None)
    p.add_argument("--lora-r", type=int, default=None, help="adapter rank (the original: 64 on all 7 projections)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is much "
                   "faster when other jobs share the cores)")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    gpu = a.llama3_random
    defaults = dict(variants="original,ours_4bit,ours" if gpu else "original,ours", n_prompts=256 if gpu else 24,
                    original_n=6 if gpu else 3, max_new_tokens=128 if gpu else 32, batch_size=128 if gpu else 8,
                    min_prompt_len=64 if gpu else 32, max_prompt_len=512 if gpu else 160, lora_r=64 if gpu else 8)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def random_prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    """Token-id prompts of seeded random lengths in [lo, hi] (ids valid for both vocabularies)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1000, min(vocab, 30000), int(L)).tolist() for L in rng.integers(lo, hi + 1, n)]


def attach_lora(model, r: int, seed: int, scale: float = 1e-3):
    """A LoRA adapter as the original trained it (alpha 16, all 7 projections), non-zero B so it really computes."""
    from peft import LoraConfig, get_peft_model

    targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                          task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))
    return pm.eval()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_loop(model, prompts, pad_id, stop, max_new: int, seed: int) -> dict:
    """The original: one prompt per generate call, sampled."""
    gen = GenParams(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=True, temperature=0.5, top_p=0.5)
    torch.manual_seed(seed)
    generate_batch(model, [prompts[0][:16]], pad_id, stop, GenParams(max_new_tokens=4, min_new_tokens=4,
                                                                     do_sample=True))  # warm-up
    sync()
    t0, n = time.perf_counter(), 0
    for p in prompts:
        n += generate_batch(model, [p], pad_id, stop, gen)[0]["n_new_tokens"]
    sync()
    return {"tokens": n, "seconds": time.perf_counter() - t0, "prompts": len(prompts), "batch_size": 1}


def time_batched(model, prompts, pad_id, stop, max_new: int, batch_size: int, static: bool = False) -> dict:
    """Ours: length-sorted, left-padded greedy batches through nbutils.evaluate.generate_batch."""
    gen = GenParams(max_new_tokens=max_new, min_new_tokens=max_new, static_cache=static)
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    generate_batch(model, [prompts[i] for i in batches[0]], pad_id, stop, gen)  # warm-up (and compile if static)
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0, n = time.perf_counter(), 0
    for b in batches:
        n += sum(r["n_new_tokens"] for r in generate_batch(model, [prompts[i] for i in b], pad_id, stop, gen))
    sync()
    out = {"tokens": n, "seconds": time.perf_counter() - t0, "prompts": len(prompts), "batch_size": batch_size}
    if torch.cuda.is_available():
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def build_random_llama3(folder: Path) -> None:
    """Llama-3-8B from its config with random weights, built on the GPU in bf16, saved once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return
    cfg = LlamaConfig(**LLAMA3_8B)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(prev)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()


def load_gpu_model(folder: Path, four_bit: bool):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    extra = {}
    if four_bit:
        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_use_double_quant=True,
                                                          bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                attn_implementation="sdpa", **extra).eval()


def main(argv=None) -> dict:
    a = parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if a.threads:
        torch.set_num_threads(a.threads)
    results: dict = {"args": vars(a)}
    if a.llama3_random:
        assert torch.cuda.is_available(), "--llama3-random needs a CUDA GPU"
        folder = Path(tempfile.gettempdir()) / "llama3-8b-random"
        t = time.time()
        build_random_llama3(folder)
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
                r = time_batched(model, prompts, pad_id, stop, a.max_new_tokens, a.batch_size, static=v == "ours_static")
            r["weights"] = ("4-bit nf4" if four_bit else ("bf16" if a.llama3_random else "fp32")) + " + LoRA attached"
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            results[v] = r
            print(f"{v:>12}: {r['tokens']:>7} tokens in {r['seconds']:7.1f} s = {r['tokens_per_s']:9.1f} tokens/s "
                  f"({r['weights']}, batch {r['batch_size']})", flush=True)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if "original" in results:
        base = results["original"]["tokens_per_s"]
        for v in variants:
            if v != "original" and v in results:
                results[v]["speedup_vs_original"] = results[v]["tokens_per_s"] / base
                print(f"{v} / original = {results[v]['speedup_vs_original']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
