"""Diagnostic stand-in for nbutils.kernels.fused_lora_triton's Philox draws: one multiply per draw, so the kernels'
time without the random numbers can be measured (`python -m benchmarks.finetune_kernels --rng cheap`). Never for
training."""
import triton
import triton.language as tl


@triton.jit
def draws_cheap(seed, rows, g, c, n_off):
    offs = (rows[:, None] * n_off + (g * 32 + c)[None, :]).to(tl.uint32)
    h = offs * 0x9E3779B1 + seed
    return h, h ^ 0x5BD1E995, h * 3, h + 7
