"""What every benchmark shares, defined once: GPU sync and timers, model shapes, the random-weight model builder,
random prompts and samples, a LoRA adapter that really computes, the environment (GPU and package versions) and
JSON writing. Imports torch/transformers inside the functions that need them, so `--help` and the CPU benchmarks
stay light."""
from __future__ import annotations

import gc
import importlib.metadata as md
import json
import os
import sys
import time
from pathlib import Path

from nbutils.finetune.config import LORA_TARGETS  # the stage's 7 projections, one home

REPO = Path(__file__).resolve().parents[1]

PEAK_TFLOPS = 790.0   # dense bf16 matmul measured on this workplace's H100s (KINDS.md: 778-798)
DEMO_PAPERS = REPO / "nbutils" / "demo_site" / "papers"

# Model shapes (random weights: the arithmetic and memory are the real ones; no hub needed)
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False, rope_theta=500000.0)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True, rope_theta=100000.0)
TINY = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=True, rope_theta=10000.0)
# issue 25: other widths for the fused-LoRA crossover (benchmarks.finetune_workloads)
SMOLLM2_360M = dict(SMOLLM2_135M, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                    num_attention_heads=15, num_key_value_heads=5)
QWEN25_1_5B_SHAPE = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, rope_theta=1000000.0)
LLAMA32_1B = dict(LLAMA3_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  tie_word_embeddings=True)
SHAPES = {"llama3-8b": LLAMA3_8B, "smollm2-135m": SMOLLM2_135M, "tiny": TINY, "smollm2-360m": SMOLLM2_360M,
          "qwen2.5-1.5b-shape": QWEN25_1_5B_SHAPE, "llama3.2-1b": LLAMA32_1B}


def log(*a) -> None:
    print(*a, flush=True)


def is_main() -> bool:
    """Rank 0 (or no distributed launch): the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def sync() -> None:
    """Wait for the GPU (no-op without CUDA), so wall-clock timers measure finished work."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_us(fn, reps: int = 20) -> float:
    """Mean microseconds of fn() on the GPU, after one untimed call."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return round((time.perf_counter() - t) / reps * 1e6, 1)


# ------------------------------------------------------------------------------------------------ models
def llama_config(shape: str | dict):
    """A LlamaConfig from a shape name of SHAPES (or a dict of the same kind); rope_theta set the way the installed
    transformers expects it."""
    from transformers import LlamaConfig

    kw = dict(SHAPES[shape] if isinstance(shape, str) else shape)
    theta = kw.pop("rope_theta")
    cfg = LlamaConfig(**kw)
    if hasattr(cfg, "rope_parameters"):
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    else:
        cfg.rope_theta = theta
    return cfg


def build_random_model(config, device: str = "cuda", folder: str | Path | None = None):
    """A random-weight Llama (seed 0) built directly on `device` (bf16 on CUDA, fp32 on CPU). `config` is a shape name,
    a shape dict or a transformers config. With `folder`: saved there (bf16 safetensors, 5 GB shards) and freed, and
    None returned; an existing folder (config.json present) is kept as it is."""
    import torch
    from transformers import LlamaForCausalLM

    if folder is not None and (Path(folder) / "config.json").exists():
        return None
    cfg = llama_config(config) if isinstance(config, (str, dict)) else config
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.config.torch_dtype = dtype
    if folder is None:
        return model.eval()
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    free_memory()
    return None


def load_gpu_model(folder: str | Path, four_bit: bool):
    """A model folder on GPU 0, bf16, SDPA attention; with four_bit the base in nf4 double-quant (bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    extra = {}
    if four_bit:
        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_use_double_quant=True,
                                                          bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                attn_implementation="sdpa", **extra).eval()


def attach_lora(model, r: int, seed: int, scale: float = 1e-3):
    """A LoRA adapter as the original trained it (alpha 16, all 7 projections), lora_B seeded non-zero (x scale) so it
    really computes."""
    import torch
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


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ inputs
def random_prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    """Token-id prompts of seeded random lengths in [lo, hi] (ids valid for both vocabularies)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(1000, min(vocab, 30000), int(L)).tolist() for L in rng.integers(lo, hi + 1, n)]


def sample_lengths(n: int, lo: int, hi: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(lo, hi + 1, size=n)


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


def demo_windows(chars: int = 500, step: int = 250) -> list[str]:
    """Overlapping windows of the demo papers' bodies (whitespace collapsed), in a fixed order."""
    out = []
    for f in sorted(DEMO_PAPERS.glob("*.txt")):
        body = " ".join(f.read_text(encoding="utf-8").split("## ", 1)[-1].split())
        out += [body[k:k + chars] for k in range(0, max(1, len(body) - chars), step)]
    return out


# ------------------------------------------------------------------------------------------------ machine
def environment(packages: tuple[str, ...] = ("transformers", "trl", "peft", "accelerate", "bitsandbytes",
                                             "liger-kernel", "datasets")) -> dict:
    """Python, torch, CUDA, the packages' versions (None when missing) and the GPU."""
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in packages:
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
    return env


def write_json(path: str | Path, obj, indent: int = 1) -> None:
    """Write obj as JSON atomically (a temporary file renamed): a run cut off mid-write keeps the previous file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")
    os.replace(tmp, path)


def matmul_tflops() -> float:
    """bf16 8192^3 matmul TFLOP/s on this GPU."""
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


def measure_bandwidth(gib: float = 4.0) -> float:
    """GPU memory bandwidth: device-to-device copy, bytes read + written per second (median of 10)."""
    import numpy as np
    import torch

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


def set_attention(model, impl: str) -> str:
    """Stage 04's attention switch on a loaded model ("varlen" is short for the stage's sdpa_varlen); says so when
    PyTorch's varlen kernel is unusable here and sdpa_varlen falls back to SDPA with a block mask."""
    from nbutils.kernels.attention import VARLEN, kernel_usable
    from nbutils.kernels.attention import set_attention as stage_set_attention

    impl = VARLEN if impl == "varlen" else impl
    if impl == VARLEN and not kernel_usable():
        log("torch.nn.attention.varlen is not usable here: sdpa_varlen falls back to SDPA with a block mask")
    return stage_set_attention(model, impl)


# ------------------------------------------------------------------------------------------------ training
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
                      and "benchmarks/finetune_speed" not in f.filename]
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
        gpu_us = sum(e.self_device_time_total for e in ka
                     if e.self_device_time_total > 0 and not e.key.startswith("ProfilerStep"))
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




def n_params_unquantised(model_dir: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in m.parameters())
