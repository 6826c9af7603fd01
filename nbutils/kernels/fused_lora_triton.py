"""Triton kernels for LoRA's dropout branch: `a = dropout(x) @ A^T` without materialising dropout(x).

PEFT draws a dropout mask over each projection's input (T x in_features), writes the dropped copy, keeps it for the
backward and multiplies the gradient by the mask again: three passes over a tensor as large as the activations, for
seven projections a layer. Here the mask is a Philox draw from (seed, element index), recomputed inside the three
kernels that need it:

  forward   a  = (x * keep / (1-p)) @ A^T                  (T x r)        `dropout_matmul`
  backward  gA = ga^T @ (x * keep / (1-p))                 (r x in)       `dropout_matmul_grad_a`
            gx += (ga @ A) * keep / (1-p)                  (T x in)       `dropout_matmul_grad_x_` (into the base
                                                                           layer's input gradient, in place)

so nothing of size T x in_features is written for the dropout and only x (shared by q/k/v and gate/up) is kept.
The mask: columns go in groups of 256; one Philox4x32-7 call per (row, group, c < 32) gives four 32-bit draws,
whose eight 16-bit halves decide the eight 32-column eighths of the group (eight decisions per call; PyTorch's
dropout makes four per Philox4x32-10 call). An element is kept where its 16 bits are >= round(p * 65536), and kept
elements are scaled by 1/(1-p') for that exact p' (|p' - p| <= 2**-17). Kernel tiling never changes the mask.
The random numbers cost most of the kernels' time, hence the fewer rounds (7: the fewest that Random123's authors
found to pass TestU01's BigCrush) and the 16-bit draws.
The same (seed, index) gives the same mask in all three, and under gradient checkpointing the recomputed forward
draws the same seed (torch's CPU generator, whose state checkpointing restores).

Runs on CUDA; with TRITON_INTERPRET=1 it also runs on CPU tensors (how the tests check it against PyTorch).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_ELEMENTS = 2**31 - 1   # Philox offsets are int32
GROUP = 256                # columns per Philox group: 8 eighths of 32 columns, one 16-bit draw each
EIGHTH = 32
# Philox4x32-7: the fewest rounds Random123 found Crush-resistant (PyTorch uses 10). A tl.constexpr: the only kind of
# global a @triton.jit function may read.
PHILOX_ROUNDS = tl.constexpr(7)


@triton.jit
def _draws(seed, rows, g, c, n_off):
    """Four 32-bit Philox draws for each (row, c) of column group g: (rows, 32) tiles."""
    offs = rows[:, None] * n_off + (g * 32 + c)[None, :]
    return tl.randint4x(seed, offs, PHILOX_ROUNDS)


@triton.jit
def _keep(e: tl.constexpr, r0, r1, r2, r3, thr):
    """Keep-mask of eighth e of the group: 16 bits of one draw (low half for even e, high for odd) >= thr."""
    if e // 2 == 0:
        r = r0
    elif e // 2 == 1:
        r = r1
    elif e // 2 == 2:
        r = r2
    else:
        r = r3
    if e % 2 == 0:
        bits = r & 0xFFFF
    else:
        bits = r >> 16
    return bits.to(tl.int32) >= thr


@triton.jit(do_not_specialize=["seed"])
def _mask_kernel(OUT, seed, M, K, n_off, thr, BLOCK_M: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1)
    c = tl.arange(0, 32)
    r0, r1, r2, r3 = _draws(seed, rm, g, c, n_off)
    for e in tl.static_range(8):
        cols = g * 256 + e * 32 + c
        inb = (rm[:, None] < M) & (cols[None, :] < K)
        tl.store(OUT + rm[:, None] * K + cols[None, :], _keep(e, r0, r1, r2, r3, thr).to(tl.int8), mask=inb)


@triton.jit
def _dropped(X, stride_xm, rm, cols, M, K, keep, scale):
    inb = (rm[:, None] < M) & (cols[None, :] < K)
    x = tl.load(X + rm[:, None] * stride_xm + cols[None, :], mask=inb, other=0.0)
    return tl.where(keep, x * scale, 0.0).to(X.dtype.element_ty)


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(X, A, PART, seed, M, K, n_off, stride_xm, groups_per_split, thr, scale,
                R: tl.constexpr, BLOCK_M: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    rr = tl.arange(0, R)
    c = tl.arange(0, 32)
    n_groups = tl.cdiv(K, 256)
    acc = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    g_start = split * groups_per_split
    for g in range(g_start, tl.minimum(g_start + groups_per_split, n_groups)):
        r0, r1, r2, r3 = _draws(seed, rm, g, c, n_off)
        for e in tl.static_range(8):
            cols = g * 256 + e * 32 + c
            x = _dropped(X, stride_xm, rm, cols, M, K, _keep(e, r0, r1, r2, r3, thr), scale)
            a_t = tl.load(A + rr[None, :] * K + cols[:, None], mask=cols[:, None] < K, other=0.0)    # (32, R)
            acc += tl.dot(x, a_t)
    tl.store(PART + split * M * R + rm[:, None] * R + rr[None, :], acc, mask=rm[:, None] < M)


@triton.jit(do_not_specialize=["seed"])
def _grad_a_kernel(GA, X, PART, seed, M, K, n_off, stride_xm, rows_per_split, thr, scale,
                   R: tl.constexpr, BLOCK_M: tl.constexpr):
    """Column group program_id(0), its eighths 0-3 or 4-7 (program_id(2)), the rows of split program_id(1)."""
    g = tl.program_id(0)
    split = tl.program_id(1)
    half = tl.program_id(2)
    rr = tl.arange(0, R)
    c = tl.arange(0, 32)
    acc0 = tl.zeros((R, 32), dtype=tl.float32)
    acc1 = tl.zeros((R, 32), dtype=tl.float32)
    acc2 = tl.zeros((R, 32), dtype=tl.float32)
    acc3 = tl.zeros((R, 32), dtype=tl.float32)
    m_start = split * rows_per_split
    col0 = g * 256 + half * 128
    for m0 in range(0, rows_per_split, BLOCK_M):
        rm = m_start + m0 + tl.arange(0, BLOCK_M)
        rm = tl.where(rm < m_start + rows_per_split, rm, M)            # rows of the next split count as absent
        ga_t = tl.trans(tl.load(GA + rm[:, None] * R + rr[None, :], mask=rm[:, None] < M, other=0.0))
        r0, r1, r2, r3 = _draws(seed, rm, g, c, n_off)
        if half == 0:
            k0 = _keep(0, r0, r1, r2, r3, thr)
            k1 = _keep(1, r0, r1, r2, r3, thr)
            k2 = _keep(2, r0, r1, r2, r3, thr)
            k3 = _keep(3, r0, r1, r2, r3, thr)
        else:
            k0 = _keep(4, r0, r1, r2, r3, thr)
            k1 = _keep(5, r0, r1, r2, r3, thr)
            k2 = _keep(6, r0, r1, r2, r3, thr)
            k3 = _keep(7, r0, r1, r2, r3, thr)
        acc0 += tl.dot(ga_t, _dropped(X, stride_xm, rm, col0 + c, M, K, k0, scale))
        acc1 += tl.dot(ga_t, _dropped(X, stride_xm, rm, col0 + 32 + c, M, K, k1, scale))
        acc2 += tl.dot(ga_t, _dropped(X, stride_xm, rm, col0 + 64 + c, M, K, k2, scale))
        acc3 += tl.dot(ga_t, _dropped(X, stride_xm, rm, col0 + 96 + c, M, K, k3, scale))
    base = PART + split * R * K + rr[:, None] * K
    tl.store(base + (col0 + c)[None, :], acc0, mask=(col0 + c)[None, :] < K)
    tl.store(base + (col0 + 32 + c)[None, :], acc1, mask=(col0 + 32 + c)[None, :] < K)
    tl.store(base + (col0 + 64 + c)[None, :], acc2, mask=(col0 + 64 + c)[None, :] < K)
    tl.store(base + (col0 + 96 + c)[None, :], acc3, mask=(col0 + 96 + c)[None, :] < K)


@triton.jit(do_not_specialize=["seed"])
def _grad_x_kernel(GX, GA, A, seed, M, K, n_off, stride_gm, thr, scale, R: tl.constexpr, BLOCK_M: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1)
    rr = tl.arange(0, R)
    c = tl.arange(0, 32)
    ga = tl.load(GA + rm[:, None] * R + rr[None, :], mask=rm[:, None] < M, other=0.0)             # (BLOCK_M, R)
    r0, r1, r2, r3 = _draws(seed, rm, g, c, n_off)
    for e in tl.static_range(8):
        cols = g * 256 + e * 32 + c
        a = tl.load(A + rr[:, None] * K + cols[None, :], mask=cols[None, :] < K, other=0.0)       # (R, 32)
        part = tl.dot(ga, a)
        inb = (rm[:, None] < M) & (cols[None, :] < K)
        ptr = GX + rm[:, None] * stride_gm + cols[None, :]
        gx = tl.load(ptr, mask=inb, other=0.0).to(tl.float32)
        gx += tl.where(_keep(e, r0, r1, r2, r3, thr), part * scale, 0.0)
        tl.store(ptr, gx.to(GX.dtype.element_ty), mask=inb)


# Launch settings: (BLOCK_M, split or num_warps...) measured on an H100 (python -m benchmarks.finetune_kernels).
TUNING = {"fwd": dict(BLOCK_M=32, splits=4, num_warps=4, num_stages=3),
          "grad_a": dict(BLOCK_M=32, splits=8, num_warps=4, num_stages=3),
          "grad_x": dict(BLOCK_M=64, num_warps=4, num_stages=3)}
INTERPRET_TUNING = {"fwd": dict(BLOCK_M=16, splits=2), "grad_a": dict(BLOCK_M=16, splits=2),
                    "grad_x": dict(BLOCK_M=16)}


def _tuning(kind: str, override: dict | None) -> dict:
    t = dict((INTERPRET_TUNING if INTERPRET else TUNING)[kind])
    t.update(override or {})
    return t


def _n_off(k: int) -> int:
    return triton.cdiv(k, GROUP) * EIGHTH


def threshold(p: float) -> tuple[int, float]:
    """p as the 16-bit threshold the kernels compare against, and the scale 1/(1-p') of that exact p'."""
    thr = min(65536, max(0, round(p * 65536)))
    return thr, (1.0 / (1.0 - thr / 65536) if thr < 65536 else 0.0)


def supported(x2d: torch.Tensor, rank: int) -> bool:
    """Shapes the kernels take: 2-D rows with unit column stride, r a power of two in [16, 128], indices in int32."""
    return (x2d.dim() == 2 and x2d.stride(-1) == 1 and 16 <= rank <= 128 and rank & (rank - 1) == 0
            and x2d.shape[0] * _n_off(x2d.shape[1]) <= MAX_ELEMENTS and x2d.numel() <= MAX_ELEMENTS
            and x2d.dtype in (torch.bfloat16, torch.float16, torch.float32))


def dropout_mask(seed: int, m: int, k: int, p: float, device) -> torch.Tensor:
    """The keep-mask (m x k, bool) that the kernels use for this seed: for tests and inspection."""
    out = torch.empty((m, k), dtype=torch.int8, device=device)
    bm = 16 if INTERPRET else 64
    thr, _ = threshold(p)
    _mask_kernel[(triton.cdiv(m, bm), triton.cdiv(k, GROUP))](out, seed, m, k, _n_off(k), thr, BLOCK_M=bm)
    return out.bool()


def dropout_matmul(x2d: torch.Tensor, weight_a: torch.Tensor, seed: int, p: float, tuning: dict | None = None):
    """(dropout(x) @ A^T) for x (M x K), A (R x K), both in the compute dtype; returns (M x R) in that dtype."""
    m, k = x2d.shape
    r = weight_a.shape[0]
    t = _tuning("fwd", tuning)
    n_groups = triton.cdiv(k, GROUP)
    splits = max(1, min(t.pop("splits"), n_groups))
    per_split = triton.cdiv(n_groups, splits)
    splits = triton.cdiv(n_groups, per_split)
    part = torch.empty((splits, m, r), dtype=torch.float32, device=x2d.device)
    thr, scale = threshold(p)
    _fwd_kernel[(triton.cdiv(m, t["BLOCK_M"]), splits)](
        x2d, weight_a.contiguous(), part, seed, m, k, _n_off(k), x2d.stride(0), per_split, thr, scale, R=r, **t)
    return (part[0] if splits == 1 else part.sum(0)).to(x2d.dtype)


def dropout_matmul_grad_a(grad_a: torch.Tensor, x2d: torch.Tensor, seed: int, p: float,
                          tuning: dict | None = None) -> torch.Tensor:
    """ga^T @ dropout(x) in fp32, (R x K), with the mask of `dropout_matmul` for the same seed."""
    m, k = x2d.shape
    r = grad_a.shape[1]
    t = _tuning("grad_a", tuning)
    bm = t["BLOCK_M"]
    splits = max(1, min(t.pop("splits"), triton.cdiv(m, bm)))
    rows = triton.cdiv(triton.cdiv(m, splits), bm) * bm
    splits = triton.cdiv(m, rows)
    part = torch.empty((splits, r, k), dtype=torch.float32, device=x2d.device)
    thr, scale = threshold(p)
    _grad_a_kernel[(triton.cdiv(k, GROUP), splits, 2)](
        grad_a.contiguous(), x2d, part, seed, m, k, _n_off(k), x2d.stride(0), rows, thr, scale, R=r, **t)
    return part[0] if splits == 1 else part.sum(0)


def dropout_matmul_grad_x_(grad_x: torch.Tensor, grad_a: torch.Tensor, weight_a: torch.Tensor, seed: int,
                           p: float, tuning: dict | None = None) -> torch.Tensor:
    """grad_x += (ga @ A) * keep / (1-p), in place on grad_x (M x K, unit column stride); returns grad_x."""
    m, k = grad_x.shape
    r = grad_a.shape[1]
    t = _tuning("grad_x", tuning)
    grid = (triton.cdiv(m, t["BLOCK_M"]), triton.cdiv(k, GROUP))
    thr, scale = threshold(p)
    _grad_x_kernel[grid](grad_x, grad_a.contiguous(), weight_a.contiguous(), seed, m, k, _n_off(k),
                         grad_x.stride(0), thr, scale, R=r, **t)
    return grad_x
