"""Issue 8: QLoRA throughput on a GPU, the original project's recipe vs ours, through the project's stage-04 code.

Subcommands (each prints a short table; `--json` writes every figure):
  make-model  random-weight Llama-3-8B (or SmolLM2-135M) folder from its config (no hub needed; the arithmetic
              and memory of training are the real ones)
  make-data   an original-format arxiv_instruction_dataset.json of synthetic rows (for the 04/05 notebooks)
  check       correctness: varlen attention vs SDPA (outputs and gradients), and that packed samples cannot see
              each other (logits of a sample packed with others == logits of the sample alone)
  train       train a few optimizer steps per case and measure tokens/s (real, non-pad tokens), MFU (4*N FLOPs per
              token) and peak GPU memory; several cases share one loaded 4-bit model; runs under
              `accelerate launch` too (DDP: tokens summed over ranks)
  kernels     LoRA dropout Triton kernels (nbutils.fused_lora_triton): bf16 errors vs PyTorch with the same mask,
              time vs PyTorch's dropout + matmul, optionally a sweep of launch settings
  gen         generation speed: the original's loop (one example per generate, sampled) vs stage 05's batched greedy

Models are built through nbutils.finetune (FinetuneConfig, resolve_runtime, load_base_model,
prepare_model_for_training, build_trainer: TRL SFTTrainer with the stage's LoRA/SFT configs). Each case is a set of
the stage's own knobs (case_params): `original` is the original recipe exactly (memory_mode lean, use_liger_kernel
False, upcast_non_quantized True, attn_implementation sdpa, packing False on EOS-joined rows);
`default_fused_adamw` and `lean` spell out what the stage now picks by itself on CUDA without flash-attn and with
liger-kernel installed (memory_mode fast / lean; `default` is fast with paged 8-bit AdamW); `stage_auto` sets no
knob at all (the stage's own resolution, printed). The cases share one loaded base model, reset to its loaded dtypes
before each case.

Issue 15: `stage_auto[_nodrop]`, `stage_lean*` (memory_mode lean; `_offload`: nbutils.kernels.offload_checkpoint's
offloaded checkpointing on top) at LoRA dropout 0.1 and 0, against `unsloth_{fast,default}[_nodrop]`: Unsloth
trained as its notebooks do, each case in its own process (benchmarks/unsloth_case.py) with `--unsloth-site`
first on its PYTHONPATH; a second table pairs each stage case with its Unsloth counterpart.

CPU dry run (tiny random Llama, plain LoRA, no 4-bit/Liger):
  python benchmarks/bench_finetune_gpu.py make-model --arch tiny --out /tmp/tiny --tokenizer .gpu_assets/smollm2 --cpu
  python benchmarks/bench_finetune_gpu.py train --model /tmp/tiny --cpu --cases original,default --steps 1 \
      --n-samples 120 --min-len 20 --max-len 60 --seq-len 128
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PEAK_TFLOPS = 790.0   # dense bf16 matmul measured on this workplace's H100s (KINDS.md: 778-798)

ARCHS = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False,
                      rope_theta=500000.0),
    "tiny": dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, rope_theta=10000.0),
}


def log(*a):
    print(*a, flush=True)


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ------------------------------------------------------------------------------------------------ models and data
def llama_config(arch: str):
    from transformers import LlamaConfig

    kw = dict(ARCHS[arch])
    theta = kw.pop("rope_theta")
    cfg = LlamaConfig(**kw)
    if hasattr(cfg, "rope_parameters"):
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    else:
        cfg.rope_theta = theta
    return cfg


def make_model(arch: str, out: str, tokenizer: str | None, device: str) -> dict:
    """Random-weight model folder (bf16 safetensors) + tokenizer files; returns what it built."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    t0 = time.time()
    if arch in ARCHS:
        cfg = llama_config(arch)
    else:  # a config.json folder (e.g. the embedded SmolLM2's)
        cfg = AutoConfig.from_pretrained(arch)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(prev)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, max_shard_size="5GB")
    if tokenizer:
        for f in Path(tokenizer).iterdir():
            if f.name.startswith("tokenizer") or f.suffix in (".jinja",) or f.name == "special_tokens_map.json":
                shutil.copy(f, Path(out) / f.name)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
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


def sample_lengths(n: int, lo: int, hi: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi + 1, size=n)


def short_samples(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> dict:
    """Pre-tokenised instruction samples: random ids, a prompt part (no loss) and a completion part."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    ids, cmask = [], []
    for L in sample_lengths(n, lo, hi, seed):
        p = int(L * rng.uniform(0.3, 0.7))
        ids.append(rng.integers(10, vocab, size=int(L)).tolist())
        cmask.append([0] * p + [1] * (int(L) - p))
    return {"input_ids": ids, "completion_mask": cmask}


def concat_chunks(samples: dict, seq_len: int, eos_id: int) -> dict:
    """The original project's packing: samples joined with EOS and cut into fixed rows, attention crossing them."""
    flat: list[int] = []
    for x in samples["input_ids"]:
        flat.extend(x)
        flat.append(eos_id)
    n = len(flat) // seq_len
    return {"input_ids": [flat[i * seq_len:(i + 1) * seq_len] for i in range(n)]}


# ------------------------------------------------------------------------------------------------ cases
@dataclasses.dataclass
class Case:
    name: str
    data: str = "packed"          # "concat" (original: fixed rows, cross-sample attention), "packed" (padding-free
                                  # BFD, isolated), "padded" (one sample a row, padded to the longest in the batch)
    attn: str = "sdpa"            # "sdpa" or "varlen" (nbutils.attention's sdpa_varlen)
    liger: bool = False
    gc: bool = True
    mb: int = 4
    accum: int = 4
    optim: str = "paged_adamw_8bit"
    upcast: bool = True           # upcast_non_quantized: peft.prepare_model_for_kbit_training's fp32 copy
    compile: bool = False         # torch.compile of each decoder layer
    lora_dropout: float = 0.1     # the original's; 0 skips PEFT's dropout (a recipe change, reported as such)
    fuse: bool = False            # fuse_lora: LoRA scale + sum in the lora_B GEMM (nbutils.fused_lora)
    triton: bool = True           # with fuse: LoRA dropout inside Triton kernels (False: PyTorch's dropout)
    steps: int | None = None      # timed optimizer steps (None: --steps)
    note: str = ""
    auto: bool = False            # set none of the knobs above but the batch (and lora_dropout, memory_mode): the
                                  # stage decides
    memory_mode: str = ""         # with auto: the stage's memory_mode ("lean": what it picks below 47 GiB)
    keep: bool | None = None      # with auto: keep_base_weight set (None: the stage's own choice)
    unsloth: str = ""             # an Unsloth case (benchmarks/unsloth_case.py in its own process):
                                  # use_gradient_checkpointing "unsloth" (its default) or "false"
    patch: str = ""               # diagnostics on top of the case: "nometrics" (TRL's per-micro-batch metrics and
                                  # their .item() syncs skipped: an upper bound), "gcoff" (Python's GC off while
                                  # training), "stocktrl" (TRL's/Trainer's own per-micro-batch read-backs instead of
                                  # nbutils.trainer's deferred ones), "nokeep" (keep_base_weight=False)


CASES = {c.name: c for c in [
    Case("original", data="concat", note="the original project's recipe exactly (cross-sample attention)"),
    Case("original_noupcast", data="concat", upcast=False,
         note="the original's recipe without peft's fp32 copy of embeddings/norms/lm_head"),
    Case("original_padded", data="padded", steps=10, note="original knobs, short samples padded, no packing"),
    Case("nolig_varlen_nogc", attn="varlen", gc=False, upcast=False, note="ablation: ours without Liger"),
    Case("default", attn="varlen", liger=True, gc=False, upcast=False, note="proposed full-profile default"),
    Case("default_upcast", attn="varlen", liger=True, gc=False, upcast=True, note="ablation: fp32 upcast kept"),
    Case("default_sdpa_mask", attn="sdpa", liger=True, gc=False, upcast=False,
         note="ablation: isolation by SDPA block mask instead of varlen"),
    Case("default_fused_adamw", attn="varlen", liger=True, gc=False, upcast=False, optim="adamw_torch_fused",
         note="ablation: fused AdamW (fp32 states)"),
    Case("default_mb8", attn="varlen", liger=True, gc=False, upcast=False, mb=8, accum=2,
         note="ablation: micro-batch 8 x accum 2"),
    Case("lean_mb8", attn="varlen", liger=True, gc=True, upcast=False, mb=8, accum=2,
         note="lean, micro-batch 8 x accum 2"),
    Case("lean", attn="varlen", liger=True, gc=True, upcast=False, note="lean: under the original's memory"),
    Case("lean_mb16", attn="varlen", liger=True, gc=True, upcast=False, mb=16, accum=1,
         note="lean, micro-batch 16 x accum 1"),
    Case("ours_padded", data="padded", attn="sdpa", liger=True, gc=False, upcast=False, steps=10,
         note="our knobs but padded instead of packed (short samples)"),
    Case("default_nodrop", attn="varlen", liger=True, gc=False, upcast=False, optim="adamw_torch_fused",
         lora_dropout=0.0, note="default + fused AdamW + LoRA dropout 0 (recipe change)"),
    Case("lean_nodrop", attn="varlen", liger=True, gc=True, upcast=False, lora_dropout=0.0,
         note="lean + LoRA dropout 0 (recipe change)"),
    Case("lean_mb8_nodrop", attn="varlen", liger=True, gc=True, upcast=False, mb=8, accum=2, lora_dropout=0.0,
         note="lean mb 8 + LoRA dropout 0 (recipe change)"),
    Case("fast", attn="varlen", liger=True, gc=False, upcast=False, optim="adamw_torch_fused", fuse=True,
         note="the stage's memory_mode=fast (>= 70 GiB): default_fused_adamw + fused LoRA"),
    Case("fast_bnb8", attn="varlen", liger=True, gc=False, upcast=False, optim="adamw_bnb_8bit", fuse=True,
         note="fast with 8-bit AdamW, not paged"),
    Case("fast_mb8", attn="varlen", liger=True, gc=False, upcast=False, optim="adamw_torch_fused", fuse=True,
         mb=8, accum=2, note="fast, micro-batch 8 x accum 2 (the memory the Triton dropout frees)"),
    Case("fast_torchdrop", attn="varlen", liger=True, gc=False, upcast=False, optim="adamw_torch_fused", fuse=True,
         triton=False, note="fast, fused LoRA but PyTorch's dropout (no Triton dropout kernels)"),
    Case("lean_fused_torchdrop", attn="varlen", liger=True, gc=True, upcast=False, fuse=True, triton=False,
         note="lean, fused LoRA but PyTorch's dropout"),
    Case("lean_fused", attn="varlen", liger=True, gc=True, upcast=False, fuse=True,
         note="the stage's memory_mode=lean: checkpointing, paged 8-bit AdamW, fused LoRA"),
    Case("lean_fused_bnb8", attn="varlen", liger=True, gc=True, upcast=False, optim="adamw_bnb_8bit", fuse=True,
         note="lean with 8-bit AdamW, not paged"),
    Case("default_compile", attn="varlen", liger=True, gc=False, upcast=False, compile=True,
         note="default + torch.compile per decoder layer"),
    Case("default_nolig_cpu", attn="sdpa", gc=False, upcast=False, note="CPU dry run"),
    Case("stage_auto", auto=True, note="no knob set: the stage's own defaults on this machine"),
    Case("auto_nometrics", auto=True, patch="nometrics",
         note="diagnostic: stage_auto without TRL's per-micro-batch metrics (no .item() after each forward)"),
    Case("auto_gcoff", auto=True, patch="gcoff", note="diagnostic: stage_auto with Python's garbage collector off"),
    Case("auto_nokeep", auto=True, patch="nokeep",
         note="stage_auto with keep_base_weight=False (4-bit weights dequantised again in the backward)"),
    Case("auto_stocktrl", auto=True, patch="stocktrl",
         note="stage_auto with TRL's own SFTTrainer read-backs (a .item() per micro-batch for metrics and tokens)"),
    Case("lean_stocktrl", attn="varlen", liger=True, gc=True, upcast=False, fuse=True, patch="stocktrl",
         note="lean_fused with TRL's own SFTTrainer read-backs"),
    # issue 15: the stage's own choices at LoRA dropout 0.1 (the original's) and 0 (Unsloth's), against Unsloth
    Case("stage_auto_nodrop", auto=True, lora_dropout=0.0, note="stage default (fast on this card), LoRA dropout 0"),
    Case("stage_lean", auto=True, memory_mode="lean", note="the stage's memory_mode=lean, the rest its own defaults"),
    Case("stage_lean_nodrop", auto=True, memory_mode="lean", lora_dropout=0.0, note="stage lean, LoRA dropout 0"),
    Case("stage_lean_keep", auto=True, memory_mode="lean", keep=True,
         note="stage lean with keep_base_weight (under checkpointing: one layer's bf16 weights held)"),
    Case("stage_lean_keep_nodrop", auto=True, memory_mode="lean", keep=True, lora_dropout=0.0,
         note="stage lean with keep_base_weight, LoRA dropout 0"),
    Case("stage_lean_offload", auto=True, memory_mode="lean", patch="offload",
         note="stage lean, checkpointed layer inputs in pinned host memory (nbutils.kernels.offload_checkpoint)"),
    Case("stage_lean_offload_nodrop", auto=True, memory_mode="lean", lora_dropout=0.0, patch="offload",
         note="stage lean, offloaded checkpoints, LoRA dropout 0"),
    Case("stage_lean_offload_keep", auto=True, memory_mode="lean", keep=True, patch="offload",
         note="stage lean, offloaded checkpoints, keep_base_weight"),
    Case("stage_lean_offload_keep_nodrop", auto=True, memory_mode="lean", keep=True, lora_dropout=0.0,
         patch="offload", note="stage lean, offloaded checkpoints, keep_base_weight, LoRA dropout 0"),
    Case("stage_nofuse_nodrop", auto=True, lora_dropout=0.0, patch="nofuse",
         note="stage default at LoRA dropout 0 with PEFT's own LoRA layers (fuse_lora=False): before issue 15"),
    Case("unsloth_default", unsloth="unsloth", note="Unsloth, use_gradient_checkpointing='unsloth' (its default)"),
    Case("unsloth_default_nodrop", unsloth="unsloth", lora_dropout=0.0,
         note="Unsloth default, LoRA dropout 0 (its recommendation)"),
    Case("unsloth_fast", unsloth="false", gc=False, note="Unsloth without checkpointing (its fastest)"),
    Case("unsloth_fast_nodrop", unsloth="false", gc=False, lora_dropout=0.0,
         note="Unsloth without checkpointing, LoRA dropout 0"),
]}


def set_float_weights(model, dtype) -> None:
    """Reset the shared base between cases: every non-quantised floating weight (norms, embeddings, lm_head) back
    to dtype (a case with upcast_non_quantized left them in fp32); 4-bit weights untouched."""
    import torch

    for p in model.parameters():
        if p.__class__.__name__ == "Params4bit" or not p.is_floating_point() or p.requires_grad:
            continue
        if p.dtype != dtype and p.dtype in (torch.float32, torch.bfloat16, torch.float16):
            p.data = p.data.to(dtype)


def attn_name(impl: str) -> str:
    from nbutils.kernels.attention import VARLEN

    return VARLEN if impl == "varlen" else impl


def case_params(case: Case) -> dict:
    """The stage's knobs (FinetuneConfig fields) that make this case."""
    if case.auto:
        extra = {"keep_base_weight": False} if case.patch == "nokeep" else {}
        if case.keep is not None:
            extra["keep_base_weight"] = case.keep
        if case.patch == "nofuse":
            extra["fuse_lora"] = False
        if case.memory_mode:
            extra["memory_mode"] = case.memory_mode
        return dict(per_device_train_batch_size=case.mb, gradient_accumulation_steps=case.accum,
                    lora_dropout=case.lora_dropout, **extra)
    return dict(per_device_train_batch_size=case.mb, gradient_accumulation_steps=case.accum,
                gradient_checkpointing=case.gc, optim=case.optim, packing=case.data == "packed",
                attn_implementation=attn_name(case.attn), use_liger_kernel=case.liger,
                upcast_non_quantized=case.upcast, lora_dropout=case.lora_dropout, fuse_lora=case.fuse)


def set_attention(model, impl: str) -> str:
    from nbutils.kernels.attention import VARLEN, kernel_usable
    from nbutils.kernels.attention import set_attention as stage_set_attention

    impl = attn_name(impl)
    if impl == VARLEN and not kernel_usable():
        log("torch.nn.attention.varlen is not usable here: sdpa_varlen falls back to SDPA with a block mask")
    return stage_set_attention(model, impl)


class StepTimer:
    """Counts real tokens at each forward (non-pad: attention_mask sum, or all ids when padding-free) and times
    the optimizer steps after the warm-up ones, with the GPU synchronised at the two ends of that window only (as in
    a real run, where nothing waits for the GPU between steps: a sync per step would leave the GPU idle while the
    CPU loads the next step's batches). The token count stays on the GPU until those sync points. Per-step times
    are CPU-clock times between step ends (the window's total is the synchronised one)."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback  # noqa: F401

        self.warmup, self.tokens, self.t0, self.tok0 = warmup, 0, None, 0
        self.t1 = None
        self.tok1 = 0
        self.step_times: list[float] = []
        self._last = None
        self.last_timed: int | None = None
        self.profile = False
        self.prof = None
        self.profile_report = None
        self.trace_path = None
        self.syncdebug = False
        self.sync_step = None
        self.sync_sites = None
        self._wcm = None

    def start_sync_debug(self):
        """torch.cuda.set_sync_debug_mode("warn") for one optimizer step; every synchronising call is counted by
        the innermost frame outside torch (warnings raised in the backward engine surface at backward())."""
        import collections
        import traceback
        import warnings

        import torch

        sites = self.sync_sites = collections.Counter()

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" not in str(message):
                return
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "/torch/" not in f.filename and "warnings" not in f.filename
                      and "bench_finetune_gpu" not in f.filename]
            where = " <- ".join(f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                                for f in reversed(frames[-2:])) or "?"
            sites[f"{str(message)[:60]} @ {where}"] += 1

        self._wcm = warnings.catch_warnings()
        self._wcm.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")

    def stop_sync_debug(self):
        import torch

        if self._wcm is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._wcm.__exit__(None, None, None)
        self._wcm = None

    def start_profile(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        self.prof.__enter__()
        self._pt0 = time.perf_counter()

    def stop_profile(self):
        if self.prof is None:
            return
        try:
            self._stop_profile()
        except Exception as e:
            log(f"profiler failed: {type(e).__name__}: {e}")
        self.prof = None

    def _stop_profile(self):
        sync()
        wall = time.perf_counter() - self._pt0
        self.prof.__exit__(None, None, None)
        ka = self.prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in ka if e.self_device_time_total > 0 and not e.key.startswith("ProfilerStep"))
        self.profile_report = {"wall_s": round(wall, 3), "kernel_time_s": round(gpu_us / 1e6, 3),
                               "top_gpu": ka.table(sort_by="self_device_time_total", row_limit=25),
                               "top_cpu": ka.table(sort_by="self_cpu_time_total", row_limit=15)}
        if self.trace_path:
            import gzip
            import shutil

            self.prof.export_chrome_trace(self.trace_path)
            try:
                self.profile_report["timeline"] = analyse_trace(self.trace_path)
            except Exception as e:
                log(f"trace analysis failed: {type(e).__name__}: {e}")
            with open(self.trace_path, "rb") as f, gzip.open(self.trace_path + ".gz", "wb", compresslevel=6) as g:
                shutil.copyfileobj(f, g)
            os.remove(self.trace_path)
        self.prof = None

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if module.training and ids is not None:
            self.tokens = self.tokens + (mask.sum() if mask is not None else ids.numel())  # no read-back here

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                model.register_forward_pre_hook(timer.hook, with_kwargs=True)

            def on_step_end(self, args, state, control, **kw):
                edge = state.global_step in (timer.warmup, timer.last_timed) or timer.prof is not None \
                    or timer._wcm is not None or (timer.profile and state.global_step == timer.last_timed)
                if edge:
                    sync()
                now = time.perf_counter()
                if timer._last is not None:
                    timer.step_times.append(now - timer._last)
                timer._last = now
                if state.global_step == timer.warmup:
                    timer.t0, timer.tok0 = now, int(timer.tokens)
                if state.global_step == timer.last_timed:
                    timer.t1, timer.tok1 = now, int(timer.tokens)
                if timer.prof is not None and state.global_step > timer.last_timed:
                    timer.stop_profile()
                if timer._wcm is not None:
                    timer.stop_sync_debug()
                if timer.profile and state.global_step == timer.last_timed:
                    timer.start_profile()
                if timer.syncdebug and state.global_step == timer.sync_step:
                    timer.start_sync_debug()

            def on_train_end(self, args, state, control, **kw):
                timer.stop_profile()
                timer.stop_sync_debug()

        return _CB()


def analyse_trace(path: str, min_gap_us: float = 5.0) -> dict:
    """Where the GPU waits, from a torch.profiler chrome trace of one step: idle gaps between GPU events (kernels,
    copies, sets), each put down to the CPU op chain that launched the work ending it (outermost > launching op)
    and to the CUDA runtime calls running during it; and the device-to-device copies by the op chain that made them."""
    import bisect
    import collections

    events = json.loads(Path(path).read_text())["traceEvents"]
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"
           and not str(e.get("name", "")).startswith("ProfilerStep")]
    runtime = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == "cuda_runtime"),
                     key=lambda e: e["ts"])
    by_tid: dict = collections.defaultdict(list)
    for e in ops:
        by_tid[e["tid"]].append(e)
    starts, parent = {}, {}
    for tid, lst in by_tid.items():
        lst.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack = []
        for e in lst:
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < e["ts"]:
                stack.pop()
            parent[id(e)] = stack[-1] if stack else None
            stack.append(e)
        starts[tid] = [e["ts"] for e in lst]
    ext = {e["args"]["External id"]: e for e in ops if "External id" in e.get("args", {})}

    def chain(op) -> str:
        names = []
        while op is not None:
            names.append(str(op["name"])[:70])
            op = parent.get(id(op))
        return " > ".join([names[-1], names[0]] if len(names) > 1 else names)

    def launcher(e):
        return ext.get(e.get("args", {}).get("External id"))

    gpu.sort(key=lambda e: e["ts"])
    t_first, busy_end = gpu[0]["ts"], gpu[0]["ts"] + gpu[0].get("dur", 0)
    gaps, busy = [], 0.0
    seg_start = t_first
    for e in gpu[1:]:
        if e["ts"] > busy_end + min_gap_us:
            gaps.append((busy_end, e["ts"], e))
            busy += busy_end - seg_start
            seg_start = e["ts"]
        busy_end = max(busy_end, e["ts"] + e.get("dur", 0))
    busy += busy_end - seg_start
    span = busy_end - t_first
    by_next, by_runtime = collections.Counter(), collections.Counter()
    hist = collections.Counter()
    rt_starts = [e["ts"] for e in runtime]
    for g0, g1, nxt in gaps:
        d = g1 - g0
        hist["<20us" if d < 20 else "20-100us" if d < 100 else "0.1-1ms" if d < 1000 else ">1ms"] += d
        op = launcher(nxt)
        by_next[chain(op) if op else str(nxt.get("name"))[:60]] += d
        i = bisect.bisect_right(rt_starts, g1)
        for r in runtime[max(0, i - 400):i]:   # runtime calls overlapping the gap
            ov = min(g1, r["ts"] + r.get("dur", 0)) - max(g0, r["ts"])
            if ov > 0:
                by_runtime[str(r["name"])] += ov
    dtod = collections.Counter()
    for e in gpu:
        if e.get("cat") == "gpu_memcpy" and "DtoD" in str(e.get("name")):
            op = launcher(e)
            dtod[chain(op) if op else "?"] += e.get("dur", 0)
    ms = lambda us: round(us / 1000, 2)  # noqa: E731
    return {"span_ms": ms(span), "gpu_busy_ms": ms(busy), "idle_ms": ms(span - busy),
            "gaps": len(gaps), "idle_by_gap_length_ms": {k: ms(v) for k, v in hist.items()},
            "idle_by_next_launch_ms": [[k, ms(v)] for k, v in by_next.most_common(25)],
            "runtime_calls_during_idle_ms": [[k, ms(v)] for k, v in by_runtime.most_common(12)],
            "dtod_copies_by_op_ms": [[k, ms(v)] for k, v in dtod.most_common(10)]}


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def n_params_unquantised(model_dir: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in m.parameters())


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


def run_case(case: Case, base, tok, ds: dict, args, n_params: int, device: str) -> dict:
    import torch
    from datasets import Dataset

    from nbutils import finetune

    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    steps = case.steps or args.steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = finetune.FinetuneConfig.from_params(
        profile="full", data_dir=args.work_dir, base_model=args.model, max_length=args.seq_len,
        max_steps=args.warmup + steps, save_steps=10**6, logging_steps=10**6, eval_steps=10**6,
        warmup_steps=1, resume=False, load_in_4bit=not args.bf16_base, **case_params(case))
    rt = finetune.resolve_runtime(cfg, device=device)
    set_float_weights(base, getattr(torch, rt.dtype))  # as loaded; the stage upcasts if the case asks
    attn = set_attention(base, rt.attn_implementation)
    base = finetune.prepare_model_for_training(base, cfg, rt)
    data = ds["concat"] if case.data == "concat" else ds["samples"]
    train = Dataset.from_dict(data)
    timer = StepTimer(args.warmup)
    timer.last_timed = args.warmup + steps
    timer.profile = case.name in (args.profile or "").split(",")
    timer.syncdebug = case.name in (args.sync_debug or "").split(",") and device == "cuda"
    timer.sync_step = args.warmup + steps + int(timer.profile)
    cfg.max_steps = args.warmup + steps + int(timer.profile) + int(timer.syncdebug)
    trainer = finetune.build_trainer(cfg, rt, base, tok, train, None, callbacks=[timer.callback()])
    if case.fuse and not case.triton:
        from nbutils.kernels.fused_lora import fuse_lora_layers

        fuse_lora_layers(trainer.model, triton_dropout=False)
    if case.compile:
        compile_layers(trainer.model)
    if case.patch == "nometrics":
        skip_trl_metrics(trainer)
    if case.patch == "stocktrl":
        use_stock_trl(trainer)
    if case.patch == "offload":
        from nbutils.kernels.offload_checkpoint import offloaded_checkpointing_callback

        trainer.add_callback(offloaded_checkpointing_callback())
    if timer.profile and args.trace_dir:
        timer.trace_path = str(Path(args.trace_dir) / f"trace_{case.name}.json")
    gc_was_on = gc.isenabled()
    if case.patch == "gcoff":
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
        log(f"[{case.name}] FAILED: {err}")
    wall = time.time() - t_start
    if case.patch == "gcoff" and gc_was_on:
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
        "case": case.name, "trainer": "stage", "note": case.note, "data": "padded" if case.data == "packed" and not rt.packing
        else case.data, "attn": attn, "liger": rt.use_liger_kernel,
        "gradient_checkpointing": rt.gradient_checkpointing, "micro_batch": case.mb, "accum": case.accum,
        "optim": rt.optim, "fp32_upcast": rt.upcast_non_quantized, "runtime": rt.describe(), "compile": case.compile, "lora_dropout": case.lora_dropout, "fuse_lora": rt.fuse_lora and ("triton" if case.triton else "torch-dropout"), "world_size": world, "timed_steps": steps,
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
        log(f"[{case.name}] profiled step: {rep['wall_s']} s wall, {rep['kernel_time_s']} s of GPU kernels")
        log(rep["top_gpu"])
        log(rep["top_cpu"])
        if rep.get("timeline"):
            log(f"[{case.name}] timeline: {json.dumps(rep['timeline'])}")
    if is_main() and timer.sync_sites is not None:
        log(f"[{case.name}] {res['syncs_in_one_step']} synchronising calls in one optimizer step:")
        for site, n in timer.sync_sites.most_common(20):
            log(f"  {n:6d}  {site}")
    if is_main():
        log(f"[{case.name}] {res['tokens_per_s']} tok/s, MFU {res['mfu']}, peak {res['peak_alloc_gib']} GiB "
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

    cfg = finetune.FinetuneConfig.from_params(profile="full", data_dir=args.work_dir, base_model=args.model,
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
        case = dataclasses.replace(CASES[name])
        if case.unsloth:
            results.append(run_unsloth_case(case, args))
        else:
            if device == "cpu":
                case.liger, case.optim = False, "adamw_torch"
                if case.attn == "varlen":
                    case.attn = "sdpa"
            if base is None:   # loaded at the first stage case (Unsloth's cases load their own, in their process)
                base = load_base(args, device)
            results.append(run_case(case, base, tok, ds, args, n_params, device))
        if is_main() and args.json:
            write_results(args.json, {"kind": "train", "env": environment(), "n_params": n_params,
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
            log(f"| {r['stage']} | {r['unsloth']} | {r['lora_dropout']} | {r['stage_tok_s']:,} | {r['unsloth_tok_s']:,} | "
                f"{r['ratio']} | {r['stage_peak_gib']} | {r['unsloth_peak_gib']} | {loss} |")
    return rows


def run_unsloth_case(case: Case, args) -> dict:
    """One Unsloth case in its own process (benchmarks/unsloth_case.py), Unsloth's folder first on PYTHONPATH; its
    JSON row, or a row with the error when the process fails."""
    import subprocess

    out = Path(args.work_dir) / f"{case.name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).with_name("unsloth_case.py")), "--model", args.model, "--case", case.name,
           "--gc", case.unsloth, "--lora-dropout", str(case.lora_dropout), "--mb", str(case.mb), "--accum",
           str(case.accum), "--steps", str(case.steps or args.steps), "--warmup", str(args.warmup), "--seq-len",
           str(args.seq_len), "--n-samples", str(args.n_samples), "--min-len", str(args.min_len), "--max-len",
           str(args.max_len), "--seed", str(args.seed), "--work-dir", args.work_dir, "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        x for x in (args.unsloth_site, os.environ.get("PYTHONPATH", "")) if x))
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, timeout=args.unsloth_timeout, capture_output=True, text=True)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        text = f"timed out after {args.unsloth_timeout} s: " + str(e.stdout or "")
    # Unsloth's own report of what it patched (its banner, "Unsloth: ..." lines), then the end of the output
    said = [ln for ln in text.splitlines() if ("Unsloth" in ln or "==((" in ln or "O^O" in ln)
            and "examples/s" not in ln][:40]
    tail = text[-args.unsloth_log_chars:]
    log(f"[{case.name}] Unsloth said:\n" + "\n".join(said) + f"\n[{case.name}] end of its output:\n{tail}")
    if out.exists():
        res = json.loads(out.read_text())
    else:
        res = {"case": case.name, "trainer": "unsloth", "error": tail[-600:], "tokens_per_s": float("nan")}
    res.update(note=case.note, process_wall_s=round(time.time() - t0, 1))
    for key in ("data", "attn", "liger", "fuse_lora", "gradient_checkpointing", "micro_batch", "accum", "optim",
                "world_size", "mfu", "peak_alloc_gib", "peak_reserved_gib", "loss"):
        res.setdefault(key, None)
    res.setdefault("lora_dropout", case.lora_dropout)
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


# ------------------------------------------------------------------------------------------------ correctness
def cmd_check(args) -> dict:
    """varlen vs SDPA numerics, and packed-sample isolation at the model level, for each attention available."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    out: dict = {"device": device}
    torch.manual_seed(0)
    if device == "cuda":
        from nbutils.kernels.attention import _varlen_call, kernel_usable

        out["varlen_available"] = kernel_usable()
        if out["varlen_available"]:
            lens = [300, 700, 1048]
            T, Hq, Hk, D = sum(lens), 32, 8, 128
            q = torch.randn(T, Hq, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(T, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(T, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            g = torch.randn(T, Hq, D, device="cuda", dtype=torch.bfloat16)
            cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
            o = _varlen_call(q, k, v, cu, max(lens), D ** -0.5)
            (o.float() * g.float()).sum().backward()
            grads = [x.grad.clone() for x in (q, k, v)]
            qr, kr, vr = (x.detach().double().requires_grad_(True) for x in (q, k, v))
            outs = []
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
                qs = qr[a:b].transpose(0, 1)
                ks = kr[a:b].transpose(0, 1).repeat_interleave(Hq // Hk, 0)
                vs = vr[a:b].transpose(0, 1).repeat_interleave(Hq // Hk, 0)
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
            ref = torch.cat(outs)
            (ref * g.double()).sum().backward()

            def rel(a, b):
                return float((a.double() - b.double()).norm() / b.double().norm())

            out["varlen_out_rel_err"] = rel(o, ref)
            out["varlen_grad_rel_err"] = [rel(a, b.grad) for a, b in zip(grads, (qr, kr, vr))]
    # model-level isolation: a sample's logits alone vs packed after another sample
    cfg = llama_config("tiny")
    cfg.num_hidden_layers = 2
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    a = torch.randint(10, 1000, (1, 37), device=device)
    b = torch.randint(10, 1000, (1, 53), device=device)
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(37), torch.arange(53)]).unsqueeze(0).to(device)
    cu = torch.tensor([0, 37, 90], dtype=torch.int32, device=device)
    impls = ["sdpa"] + (["varlen"] if device == "cuda" and out.get("varlen_available") else [])
    for impl in impls:
        set_attention(model, impl)
        with torch.no_grad():
            alone = model(input_ids=b, use_cache=False).logits[0].float()
            extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 53, "max_length_k": 53}
            iso = model(input_ids=packed, position_ids=pos, use_cache=False, **extra).logits[0, 37:].float()
            cross = model(input_ids=packed, use_cache=False).logits[0, 37:].float()  # the original's packing: no boundary
            iso_pos = model(input_ids=packed, position_ids=pos, use_cache=False).logits[0, 37:].float()
        out[f"{impl}_packed_vs_alone_max_abs_diff"] = float((iso - alone).abs().max())
        out[f"{impl}_packed_position_ids_only_vs_alone_max_abs_diff"] = float((iso_pos - alone).abs().max())
        out[f"{impl}_concat_vs_alone_max_abs_diff"] = float((cross - alone).abs().max())
    out["logit_scale"] = float(alone.abs().max())
    if device == "cuda":
        out["lora_dropout_kernels"] = check_dropout_kernels()
    if is_main():
        log(json.dumps(out, indent=1))
    if args.json:
        write_results(args.json, {"kind": "check", "env": environment(), **out})
    return out


def _timed_us(fn, reps: int = 20) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - t) / reps * 1e6, 1)


def check_dropout_kernels(m: int = 8192, r: int = 64, p: float = 0.1, sweep: bool = False) -> dict:
    """nbutils.fused_lora_triton on the GPU: the three kernels vs PyTorch with the same mask (bf16), and their time
    against what PEFT runs for the same work (dropout + the lora_A matmul; the two backward products with the mask
    multiply and the add). With sweep, every launch setting of the grid below is timed too."""
    import itertools

    import torch

    from nbutils.kernels import fused_lora_triton as kernels

    def rel(a, b):
        return round(float((a.float() - b.float()).norm() / b.float().norm()), 5)

    res = {"tuning": kernels.TUNING}
    for k in (4096, 14336):
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        a_w = torch.randn(r, k, device="cuda", dtype=torch.bfloat16) * 0.02
        ga = torch.randn(m, r, device="cuda", dtype=torch.bfloat16)
        gx = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        keep = kernels.dropout_mask(7, m, k, p, "cuda")
        scale = kernels.threshold(p)[1]
        xd = x * keep * scale
        row = {"drop_fraction": round(1 - keep.float().mean().item(), 4),
               "fwd_rel_err": rel(kernels.dropout_matmul(x, a_w, 7, p), xd @ a_w.t()),
               "grad_a_rel_err": rel(kernels.dropout_matmul_grad_a(ga, x, 7, p), ga.float().t() @ xd.float()),
               "grad_x_rel_err": rel(kernels.dropout_matmul_grad_x_(gx.clone(), ga, a_w, 7, p),
                                     gx.float() + (ga.float() @ a_w.float()) * keep * scale)}
        drop = torch.nn.functional.dropout
        mask = (torch.rand_like(x) > p).to(x.dtype)
        row["us_fwd_pytorch"] = _timed_us(lambda: drop(x, p, True) @ a_w.t())
        row["us_bwd_pytorch"] = _timed_us(lambda: (ga.t() @ xd, gx + (ga @ a_w) * mask / (1 - p)))
        row["us_fwd_kernel"] = _timed_us(lambda: kernels.dropout_matmul(x, a_w, 7, p))
        row["us_grad_a_kernel"] = _timed_us(lambda: kernels.dropout_matmul_grad_a(ga, x, 7, p))
        row["us_grad_x_kernel"] = _timed_us(lambda: kernels.dropout_matmul_grad_x_(gx, ga, a_w, 7, p))
        row["us_bwd_kernels"] = round(row["us_grad_a_kernel"] + row["us_grad_x_kernel"], 1)
        if sweep:
            grid = {"fwd": (dict(BLOCK_M=bm, splits=sp, num_warps=w, num_stages=st)
                            for bm, sp, w, st in itertools.product((32, 64, 128), (1, 2, 4, 8), (4, 8), (3,))),
                    "grad_a": (dict(BLOCK_M=bm, splits=sp, num_warps=w, num_stages=3)
                               for bm, sp, w in itertools.product((32, 64, 128), (8, 16, 32, 64), (4, 8))),
                    "grad_x": (dict(BLOCK_M=bm, num_warps=w, num_stages=st)
                               for bm, w, st in itertools.product((32, 64, 128), (4, 8), (2, 3)))}
            calls = {"fwd": lambda t: kernels.dropout_matmul(x, a_w, 7, p, tuning=t),
                     "grad_a": lambda t: kernels.dropout_matmul_grad_a(ga, x, 7, p, tuning=t),
                     "grad_x": lambda t: kernels.dropout_matmul_grad_x_(gx, ga, a_w, 7, p, tuning=t)}
            for name, settings in grid.items():
                times = []
                for t in settings:
                    try:
                        times.append((_timed_us(lambda: calls[name](dict(t)), reps=10), t))
                    except Exception as e:  # a setting that does not compile (shared memory) is just skipped
                        times.append((float("inf"), {**t, "error": type(e).__name__}))
                times.sort(key=lambda z: z[0])
                row[f"sweep_{name}"] = [[us, t] for us, t in times[:6]]
        res[f"K={k}"] = row
        del x, gx, xd, mask
        torch.cuda.empty_cache()
    return res


def use_cheap_draws() -> None:
    """Diagnostic: swap the kernels' Philox draws for one multiply per draw (before anything compiles), to see how
    much of the kernels' time the random numbers take."""
    sys.path.insert(0, str(Path(__file__).parent))
    from cheap_draws import draws_cheap

    from nbutils.kernels import fused_lora_triton as kernels

    kernels._draws = draws_cheap


def cmd_kernels(args) -> dict:
    if args.rng == "cheap":
        use_cheap_draws()
    out = {"kind": "kernels", "rng": args.rng, "env": environment(), **check_dropout_kernels(sweep=args.sweep)}
    log(json.dumps(out, indent=1))
    if args.json:
        write_results(args.json, out)
    return out


# ------------------------------------------------------------------------------------------------ generation
def cmd_gen(args) -> dict:
    """The original's loop (one prompt per generate, sampled, 4-bit) vs stage 05's batched greedy
    (nbutils.evaluate.generate_batch; bf16 on a >= 40 GiB card as EvaluateConfig.load_in_4bit=None chooses).
    Both with a LoRA adapter attached (r=64, 7 projections) and min_new_tokens = max_new_tokens so both do
    the same number of tokens per example."""
    import torch
    from peft import LoraConfig, get_peft_model

    from nbutils.evaluate import GenParams, generate_batch
    from nbutils.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(args.tokenizer or args.model, args.work_dir)
    vocab = min(len(tok), 49152)
    n_new = args.new_tokens
    rows = short_samples(max(args.batch_sizes + [args.loop_examples]), 100, 300, vocab, seed=3)["input_ids"]
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
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
        gc.collect()
        torch.cuda.empty_cache()
    ref = results[0]["tokens_per_s"]
    log("\n| mode | weights | batch | new tokens | s | tok/s | x original loop | peak GiB |")
    log("|---|---|---|---|---|---|---|---|")
    for r in results:
        log(f"| {r['mode']} | {r['weights']} | {r['batch']} | {r['new_tokens']} | {r['seconds']} | "
            f"{r['tokens_per_s']:,} | {r['tokens_per_s'] / ref:.1f} | {r['peak_alloc_gib']} |")
    if args.json:
        write_results(args.json, {"kind": "gen", "env": environment(), "args": vars(args), "results": results})
    return {"results": results}


# ------------------------------------------------------------------------------------------------ misc
def environment() -> dict:
    import importlib.metadata as md

    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in ("transformers", "trl", "peft", "accelerate", "bitsandbytes", "liger-kernel", "datasets"):
        try:
            env[pkg] = md.version(pkg)
        except Exception:
            env[pkg] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
    return env


def write_results(path: str, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    sync()
    return 2 * 8192 ** 3 * 20 / (time.perf_counter() - t0) / 1e12


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--arch", default="llama3-8b", help="llama3-8b | tiny | a folder holding a config.json")
    m.add_argument("--out", required=True)
    m.add_argument("--tokenizer", default=None, help="folder whose tokenizer files are copied in")
    m.add_argument("--cpu", action="store_true")
    d = sub.add_parser("make-data")
    d.add_argument("--out", required=True)
    d.add_argument("--rows", type=int, default=64)
    for name in ("check", "train", "gen"):
        s = sub.add_parser(name)
        s.add_argument("--model", default=None)
        s.add_argument("--tokenizer", default=None)
        s.add_argument("--work-dir", default="/tmp/bench_finetune_gpu")
        s.add_argument("--json", default=None)
        s.add_argument("--cpu", action="store_true")
        s.add_argument("--seed", type=int, default=0)
    t = sub.choices["train"]
    t.add_argument("--cases", default="original,default,lean")
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
    g = sub.choices["gen"]
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--loop-examples", type=int, default=3)
    g.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 128])
    g.add_argument("--only-4bit", action="store_true")
    k = sub.add_parser("kernels", help="LoRA dropout Triton kernels: correctness and time vs PyTorch (GPU)")
    k.add_argument("--sweep", action="store_true", help="time every launch setting of a small grid too")
    k.add_argument("--json", default=None)
    k.add_argument("--rng", default="philox", choices=("philox", "cheap"),
                   help="cheap: a one-multiply stand-in for the Philox draws (diagnostic: the kernels' time "
                        "without the random numbers; masks are then not random)")
    a = p.parse_args(argv)
    if a.cmd == "kernels":
        cmd_kernels(a)
    elif a.cmd == "make-model":
        make_model(a.arch, a.out, a.tokenizer, "cpu" if a.cpu else "cuda")
    elif a.cmd == "make-data":
        make_data(a.out, a.rows)
    elif a.cmd == "check":
        if not a.cpu:
            import torch

            if torch.cuda.is_available():
                log(f"bf16 8192^3 matmul: {matmul_tflops():.0f} TFLOP/s")
        cmd_check(a)
    elif a.cmd == "train":
        cmd_train(a)
    elif a.cmd == "gen":
        cmd_gen(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
