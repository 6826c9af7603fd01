"""nbutils.finetune.runtime: what the machine does, decided from the config and the card's properties (no GPU
needed: torch.cuda's answers are faked), each choice with its reason; and the OOM message built from it."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from nbutils.finetune import FinetuneConfig, resume, runtime
from nbutils.finetune import train as tr
from nbutils.finetune.config import FAST_MIN_GPU_GIB_FUSED_DROPOUT, FUSE_LORA_MIN_HIDDEN
from nbutils.io import PROJECT_ROOT
from tests.support.finetune import ORIGINAL_RECIPE, full_cfg


def test_cpu_runtime_falls_back_and_says_so(tmp_path):
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path))
    rt = runtime.resolve_runtime(cfg, device="cpu")
    assert (rt.load_in_4bit, rt.optim, rt.bf16, rt.fp16, rt.dtype) == (False, "adamw_torch", False, False, "float32")
    assert any("4-bit" in n for n in rt.notes) and any("adamw_torch" in n for n in rt.notes)
    assert (rt.attn_implementation, rt.packing, rt.use_liger_kernel, rt.gradient_checkpointing) == \
        ("sdpa", False, False, True)  # CPU: lean, as before the memory modes
    demo = runtime.resolve_runtime(FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path)), device="cpu")
    assert (demo.attn_implementation, demo.optim, demo.gradient_checkpointing, demo.packing, demo.use_liger_kernel,
            demo.upcast_non_quantized) == ("sdpa", "adamw_torch", False, False, False, False)


def fake_cuda(monkeypatch, gib: float = 79.1, liger: bool = True, flash: bool = False):
    """resolve_runtime(device="cuda") on this CPU machine: an Ampere+ GPU with `gib` GiB, bf16, no flash-attn."""
    from nbutils import models
    from nbutils.kernels import attention

    monkeypatch.setenv("NBUTILS_DTYPE", "bfloat16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(models, "flash_attn_available", lambda: flash)
    monkeypatch.setattr(attention, "kernel_usable", lambda *a: True)
    monkeypatch.setattr(runtime, "gpu_memory_gib", lambda: gib)
    monkeypatch.setattr(runtime, "liger_available", lambda: liger)


def test_full_profile_on_a_big_gpu_takes_the_fast_recipe(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gib=79.1)
    rt = runtime.resolve_runtime(full_cfg(tmp_path), device="cuda")
    assert (rt.memory_mode, rt.gradient_checkpointing, rt.optim) == ("fast", False, "adamw_torch_fused")
    assert (rt.attn_implementation, rt.packing, rt.padding_free) == ("sdpa_varlen", True, True)
    assert (rt.use_liger_kernel, rt.upcast_non_quantized, rt.load_in_4bit, rt.bf16) == (True, False, True, True)
    text = rt.describe()
    assert "memory_mode=fast (auto: GPU has 79.1 GiB >= " in text
    assert "optim=adamw_torch_fused (from memory_mode)" in text and "kept in bfloat16" in text


def test_full_profile_on_a_smaller_gpu_is_lean(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gib=39.4)
    rt = runtime.resolve_runtime(full_cfg(tmp_path), device="cuda")
    assert (rt.memory_mode, rt.gradient_checkpointing, rt.optim) == ("lean", True, "paged_adamw_8bit")
    assert rt.packing and rt.use_liger_kernel and "39.4 GiB < " in rt.describe()


@pytest.mark.parametrize("triton,params,mode,why", [
    (True, {}, "fast", "47.9 GiB >= 47 (LoRA dropout in Triton kernels)"),
    (False, {}, "lean", "47.9 GiB < 70 (PEFT's LoRA dropout)"),
    (True, {"fuse_lora": False}, "lean", "47.9 GiB < 70 (PEFT's LoRA dropout)"),
    (False, {"lora_dropout": 0.0}, "fast", "47.9 GiB >= 47 (no LoRA dropout)")])
def test_a_48gb_gpu_is_fast_only_where_the_dropout_keeps_no_copy(tmp_path, monkeypatch, triton, params, mode, why):
    import nbutils.models as models

    fake_cuda(monkeypatch, gib=47.9)
    real = models.module_imports
    monkeypatch.setattr(models, "module_imports", lambda name: triton if name == "triton" else real(name))
    rt = runtime.resolve_runtime(full_cfg(tmp_path, **params), device="cuda")
    assert rt.memory_mode == mode and why in rt.describe()


@pytest.mark.parametrize("gib,params,keep,why", [
    (79.1, {}, True, "keep_base_weight=True (auto: GPU has 79.1 GiB >= 70)"),
    (47.9, {}, False, "keep_base_weight=False (auto: GPU has 47.9 GiB < 70)"),
    (79.1, {"memory_mode": "lean"}, False, "keep_base_weight=False (auto: gradient checkpointing)"),
    (79.1, {"keep_base_weight": "False"}, False, "keep_base_weight=False (set)"),
    (39.4, {"keep_base_weight": True}, True, "keep_base_weight=True (set)")])
def test_dequantised_weights_are_kept_only_where_memory_allows(tmp_path, monkeypatch, gib, params, keep, why):
    fake_cuda(monkeypatch, gib=gib)
    rt = runtime.resolve_runtime(full_cfg(tmp_path, **params), device="cuda")
    assert rt.keep_base_weight is keep and why in rt.describe()
    tip = "keep_base_weight=False (dequantises each 4-bit weight again"
    assert (tip in tr.explain_oom(full_cfg(tmp_path, **params), rt)) is keep
    assert not runtime.resolve_runtime(full_cfg(tmp_path, **params), device="cpu").keep_base_weight


def test_injected_knobs_win_over_the_memory_mode(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gib=79.1)
    cfg = full_cfg(tmp_path, gradient_checkpointing=True, optim="paged_adamw_8bit")
    rt = runtime.resolve_runtime(cfg, device="cuda")
    assert (rt.memory_mode, rt.gradient_checkpointing, rt.optim) == ("fast", True, "paged_adamw_8bit")
    assert "gradient_checkpointing=True (set)" in rt.describe()
    lean = runtime.resolve_runtime(full_cfg(tmp_path, memory_mode="lean"), device="cuda")
    assert (lean.gradient_checkpointing, lean.optim) == (True, "paged_adamw_8bit") and "(set)" in lean.memory_reason
    with pytest.raises(ValueError, match="memory_mode"):
        full_cfg(tmp_path, memory_mode="turbo")


def test_original_recipe_is_reproducible_with_flags(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gib=79.1)
    rt = runtime.resolve_runtime(full_cfg(tmp_path, **ORIGINAL_RECIPE), device="cuda")
    assert (rt.attn_implementation, rt.packing, rt.gradient_checkpointing, rt.optim, rt.use_liger_kernel,
            rt.upcast_non_quantized, rt.load_in_4bit) == ("sdpa", False, True, "paged_adamw_8bit", False, True, True)
    assert "upcast to fp32" in rt.describe()


def test_liger_is_optional_and_cuda_only(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, liger=False)
    rt = runtime.resolve_runtime(full_cfg(tmp_path), device="cuda")
    assert rt.use_liger_kernel is False and any("pip install liger-kernel==0.8.5" in n for n in rt.notes)
    with pytest.raises(ValueError, match="liger"):
        runtime.resolve_runtime(full_cfg(tmp_path, use_liger_kernel=True), device="cuda")
    cpu = runtime.resolve_runtime(full_cfg(tmp_path, use_liger_kernel="true"), device="cpu")
    assert cpu.use_liger_kernel is False and any("needs CUDA" in n for n in cpu.notes)


def test_packing_auto_without_flash_or_varlen_stays_off_on_gpu(tmp_path, monkeypatch):
    fake_cuda(monkeypatch)
    from nbutils.kernels import attention

    monkeypatch.setattr(attention, "kernel_usable", lambda *a: False)
    rt = runtime.resolve_runtime(full_cfg(tmp_path), device="cuda")
    assert (rt.attn_implementation, rt.packing) == ("sdpa", False) and any("packing off" in n for n in rt.notes)
    assert runtime.packing_is_isolated("sdpa_varlen")


def test_out_of_memory_in_fast_mode_suggests_lean(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gib=79.1)
    cfg = full_cfg(tmp_path)
    rt = runtime.resolve_runtime(cfg, device="cuda")

    class OOMTrainer:
        def train(self, resume_from_checkpoint=None):
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(tr.FinetuneOOMError, match='memory_mode="lean"'):
        tr.run_training(OOMTrainer(), cfg, rt, None)


def test_checkpoint_of_another_optimizer_is_not_resumed(tmp_path, monkeypatch):
    rows = [{"prompt": "p", "completion": "c"}]
    fake_cuda(monkeypatch, gib=79.1)
    cfg = full_cfg(tmp_path)
    fast = resume.run_fingerprint(cfg, rows, runtime.resolve_runtime(cfg, device="cuda"))
    monkeypatch.setattr(runtime, "gpu_memory_gib", lambda: 39.4)
    lean = resume.run_fingerprint(cfg, rows, runtime.resolve_runtime(cfg, device="cuda"))
    assert fast != lean  # adamw_torch_fused state cannot resume as paged 8-bit AdamW
    same = full_cfg(tmp_path, memory_mode="lean")
    assert resume.run_fingerprint(same, rows, runtime.resolve_runtime(same, device="cuda")) == lean


def test_packing_is_refused_without_sample_isolation(tmp_path):
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), attn_implementation="flex_attention",
                                     packing=True)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    assert rt.packing is False and any("packing refused" in n for n in rt.notes)
    auto = runtime.resolve_runtime(full_cfg(tmp_path), device="cpu")
    assert auto.packing is False  # "auto" packs only with flash-attn's varlen kernels
    forced = runtime.resolve_runtime(full_cfg(tmp_path, packing=True), device="cpu")
    assert forced.packing and forced.padding_free  # SDPA keeps packed samples apart (see the test below)
    with pytest.raises(ValueError, match="cross-sample"):
        runtime.resolve_runtime(full_cfg(tmp_path, packing=True, packing_strategy="wrapped"), device="cpu")


def test_out_of_memory_message_names_the_knobs_that_free_memory(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gib=79.1)
    cfg = full_cfg(tmp_path, fuse_lora=False)
    msg = tr.explain_oom(cfg, runtime.resolve_runtime(cfg, device="cuda"))
    assert "per_device_train_batch_size=4 -> 2" in msg and 'memory_mode="lean"' in msg
    assert "fuse_lora=True" in msg and "lora_r=64 -> 16" in msg
    cfg = full_cfg(tmp_path)
    assert "fuse_lora" not in tr.explain_oom(cfg, runtime.resolve_runtime(cfg, device="cuda"))


# ------------------------------------------------------------------------------------------------ the card decides
# torch.cuda.get_device_properties() of real cards (total_memory as torch reports it)
T4 = types.SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15_828_320_256)          # Colab free
L4 = types.SimpleNamespace(name="NVIDIA L4", major=8, minor=9, total_memory=23_580_639_232)
A100_80GB = types.SimpleNamespace(name="NVIDIA A100-SXM4-80GB", major=8, minor=0, total_memory=85_097_971_712)


def fake_card(monkeypatch, props) -> None:
    """torch.cuda answering as `props` would, through torch's own is_bf16_supported: a pre-Ampere card can still
    create bf16 tensors (emulated), which torch counts as "supported" unless asked for native support."""
    monkeypatch.delenv("NBUTILS_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (props.major, props.minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda *a: True)
    monkeypatch.setattr(runtime, "prefer_expandable_segments", lambda: None)  # no environment change in tests


def test_a_t4_gets_fp16_and_the_lean_mode_by_itself(tmp_path, monkeypatch):
    """Colab's free GPU: 16 GB, compute capability 7.5, no native bf16. The full profile, nothing set."""
    fake_card(monkeypatch, T4)
    cfg = full_cfg(tmp_path)
    rt = runtime.resolve_runtime(cfg)
    assert (rt.device, rt.dtype, rt.fp16, rt.bf16) == ("cuda", "float16", True, False)
    assert (rt.memory_mode, rt.gradient_checkpointing, rt.optim) == ("lean", True, "paged_adamw_8bit")
    assert (rt.load_in_4bit, rt.keep_base_weight, rt.attn_implementation, rt.packing) == (True, False, "sdpa", False)
    text = rt.describe()
    assert f"GPU has 14.7 GiB < {FAST_MIN_GPU_GIB_FUSED_DROPOUT:g}" in text and "this GPU has no bf16" in text


def test_lean_mode_on_a_gpu_offloads_checkpoints_unless_told_not_to(tmp_path, monkeypatch):
    fake_card(monkeypatch, L4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = runtime.resolve_runtime(full_cfg(tmp_path))
    assert (rt.memory_mode, rt.gradient_checkpointing, rt.offload_checkpoints) == ("lean", True, True)
    assert "offload_checkpoints=True (auto: CUDA, one process)" in rt.describe()
    assert runtime.resolve_runtime(full_cfg(tmp_path, offload_checkpoints=False)).offload_checkpoints is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert runtime.resolve_runtime(full_cfg(tmp_path)).offload_checkpoints is False  # not tried under DDP
    monkeypatch.delenv("WORLD_SIZE")
    fake_card(monkeypatch, A100_80GB)
    assert runtime.resolve_runtime(full_cfg(tmp_path)).offload_checkpoints is False  # fast mode: no checkpoints
    assert runtime.resolve_runtime(full_cfg(tmp_path), device="cpu").offload_checkpoints is False


@pytest.mark.parametrize("card,dtype,mode", [(L4, "bfloat16", "lean"), (A100_80GB, "bfloat16", "fast")])
def test_ampere_cards_get_bf16_and_their_memory_mode(tmp_path, monkeypatch, card, dtype, mode):
    fake_card(monkeypatch, card)
    rt = runtime.resolve_runtime(full_cfg(tmp_path))
    assert (rt.dtype, rt.bf16, rt.fp16, rt.memory_mode) == (dtype, True, False, mode)


def test_expandable_segments_are_set_before_cuda_starts_unless_the_user_chose(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != runtime.ALLOC_CONF_ENV}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert runtime.prefer_expandable_segments() is None and env[runtime.ALLOC_CONF_ENV] == "expandable_segments:True"
    env[runtime.ALLOC_CONF_ENV] = "backend:cudaMallocAsync"
    runtime.prefer_expandable_segments()
    assert env[runtime.ALLOC_CONF_ENV] == "backend:cudaMallocAsync"  # the user's value wins
    del env[runtime.ALLOC_CONF_ENV]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert "restart the kernel" in runtime.prefer_expandable_segments()  # too late: said, not set
    assert runtime.ALLOC_CONF_ENV not in env


def test_importing_the_stage_changes_no_environment():
    code = ("import os; os.environ.pop('PYTORCH_CUDA_ALLOC_CONF', None); import nbutils.finetune, "
            "nbutils.finetune.__main__, nbutils.finetune.callbacks; print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.stdout.strip() == "None"


# ------------------------------------------------------------------ fuse_lora="auto": by the model's width (issue 25)
@pytest.mark.parametrize("profile", ["demo", "full"])
def test_auto_is_the_default(profile):
    assert FinetuneConfig.from_params(profile=profile).fuse_lora == "auto"


def test_auto_decides_by_width():
    on, why = runtime.resolve_fuse_lora("auto", 4096)
    assert on and f"hidden_size 4096 >= {FUSE_LORA_MIN_HIDDEN}" in why
    off, why = runtime.resolve_fuse_lora("auto", 576)
    assert not off and f"hidden_size 576 < {FUSE_LORA_MIN_HIDDEN}" in why and "PEFT" in why
    assert runtime.resolve_fuse_lora("auto", None)[0] is True          # unknown width: the fused path, as before


@pytest.mark.parametrize("value", [True, False])
def test_a_set_value_wins_over_the_width(value):
    for width in (576, 4096):
        got, why = runtime.resolve_fuse_lora(value, width)
        assert got is value and why == f"fuse_lora={value} (set)"


def test_the_runtime_says_auto_until_the_model_is_loaded(tmp_path):
    rt = runtime.resolve_runtime(FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path)), device="cpu")
    assert rt.fuse_lora == "auto" and "decided by the model width" in rt.describe()
