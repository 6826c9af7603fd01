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
MAX_ELEMENTS = 2**31 - 1   # Philox offsets are int32: element index = row * in_features + column


@triton.jit
def _keep(seed, rows, cols, n_cols, p):
    """Boolean tile: True where dropout keeps the element (the same draw in every kernel)."""
    offs = rows[:, None] * n_cols + cols[None, :]
    return tl.rand(seed, offs) >= p


@triton.jit(do_not_specialize=["seed"])
def _mask_kernel(OUT, seed, M, K, p, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    inb = (rm[:, None] < M) & (rk[None, :] < K)
    keep = _keep(seed, rm, rk, K, p)
    tl.store(OUT + rm[:, None] * K + rk[None, :], keep.to(tl.int8), mask=inb)


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(X, A, OUT, seed, M, K, stride_xm, p, scale,
                R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = tl.arange(0, R)
    acc = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        inb = (rm[:, None] < M) & (rk[None, :] < K)
        x = tl.load(X + rm[:, None] * stride_xm + rk[None, :], mask=inb, other=0.0)
        keep = _keep(seed, rm, rk, K, p)
        x = tl.where(keep, x * scale, 0.0).to(X.dtype.element_ty)
        a_t = tl.load(A + rr[None, :] * K + rk[:, None], mask=rk[:, None] < K, other=0.0)   # (BLOCK_K, R)
        acc += tl.dot(x, a_t)
    tl.store(OUT + rm[:, None] * R + rr[None, :], acc.to(OUT.dtype.element_ty), mask=rm[:, None] < M)


@triton.jit(do_not_specialize=["seed"])
def _grad_a_kernel(GA, X, PART, seed, M, K, stride_xm, rows_per_split, p, scale,
                   R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1)
    rr = tl.arange(0, R)
    acc = tl.zeros((R, BLOCK_K), dtype=tl.float32)
    m_start = split * rows_per_split
    for m0 in range(0, rows_per_split, BLOCK_M):
        rm = m_start + m0 + tl.arange(0, BLOCK_M)
        row_ok = (rm < M) & (rm < m_start + rows_per_split)
        ga = tl.load(GA + rm[:, None] * R + rr[None, :], mask=row_ok[:, None], other=0.0)        # (BLOCK_M, R)
        inb = row_ok[:, None] & (rk[None, :] < K)
        x = tl.load(X + rm[:, None] * stride_xm + rk[None, :], mask=inb, other=0.0)              # (BLOCK_M, BLOCK_K)
        keep = _keep(seed, rm, rk, K, p)
        x = tl.where(keep, x * scale, 0.0).to(X.dtype.element_ty)
        acc += tl.dot(tl.trans(ga), x)
    tl.store(PART + split * R * K + rr[:, None] * K + rk[None, :], acc, mask=rk[None, :] < K)


@triton.jit(do_not_specialize=["seed"])
def _grad_x_kernel(GX, GA, A, seed, M, K, stride_gm, p, scale,
                   R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rr = tl.arange(0, R)
    ga = tl.load(GA + rm[:, None] * R + rr[None, :], mask=rm[:, None] < M, other=0.0)             # (BLOCK_M, R)
    a = tl.load(A + rr[:, None] * K + rk[None, :], mask=rk[None, :] < K, other=0.0)              # (R, BLOCK_K)
    part = tl.dot(ga, a)
    keep = _keep(seed, rm, rk, K, p)
    inb = (rm[:, None] < M) & (rk[None, :] < K)
    ptr = GX + rm[:, None] * stride_gm + rk[None, :]
    gx = tl.load(ptr, mask=inb, other=0.0).to(tl.float32)
    gx += tl.where(keep, part * scale, 0.0)
    tl.store(ptr, gx.to(GX.dtype.element_ty), mask=inb)


def _blocks(k: int) -> tuple[int, int]:
    if INTERPRET:
        return 16, 16
    return 64, 64 if k % 128 else 128


def supported(x2d: torch.Tensor, rank: int) -> bool:
    """Shapes the kernels take: 2-D rows with unit column stride, r a power of two >= 16, index within int32."""
    return (x2d.dim() == 2 and x2d.stride(-1) == 1 and rank >= 16 and rank & (rank - 1) == 0 and rank <= 256
            and x2d.numel() <= MAX_ELEMENTS and x2d.dtype in (torch.bfloat16, torch.float16, torch.float32))


def dropout_mask(seed: int, m: int, k: int, p: float, device) -> torch.Tensor:
    """The keep-mask (m x k, bool) that the kernels use for this seed: for tests and inspection."""
    out = torch.empty((m, k), dtype=torch.int8, device=device)
    grid = (triton.cdiv(m, 32), triton.cdiv(k, 32))
    _mask_kernel[grid](out, seed, m, k, p, BLOCK_M=32, BLOCK_K=32)
    return out.bool()


def dropout_matmul(x2d: torch.Tensor, weight_a: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """(dropout(x) @ A^T) for x (M x K), A (R x K), both in the compute dtype; returns (M x R)."""
    m, k = x2d.shape
    r = weight_a.shape[0]
    out = torch.empty((m, r), dtype=x2d.dtype, device=x2d.device)
    bm, bk = _blocks(k)
    _fwd_kernel[(triton.cdiv(m, bm),)](x2d, weight_a.contiguous(), out, seed, m, k, x2d.stride(0), p,
                                       1.0 / (1.0 - p), R=r, BLOCK_M=bm, BLOCK_K=bk)
    return out


def dropout_matmul_grad_a(grad_a: torch.Tensor, x2d: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """ga^T @ dropout(x) in fp32, (R x K), with the mask of `dropout_matmul` for the same seed."""
    m, k = x2d.shape
    r = grad_a.shape[1]
    bm, bk = _blocks(k)
    splits = max(1, min(32, m // (4 * bm)))
    rows = triton.cdiv(triton.cdiv(m, splits), bm) * bm
    splits = triton.cdiv(m, rows)
    part = torch.empty((splits, r, k), dtype=torch.float32, device=x2d.device)
    _grad_a_kernel[(triton.cdiv(k, bk), splits)](grad_a.contiguous(), x2d, part, seed, m, k, x2d.stride(0), rows,
                                                 p, 1.0 / (1.0 - p), R=r, BLOCK_M=bm, BLOCK_K=bk)
    return part.sum(0)


def dropout_matmul_grad_x_(grad_x: torch.Tensor, grad_a: torch.Tensor, weight_a: torch.Tensor, seed: int,
                           p: float) -> torch.Tensor:
    """grad_x += (ga @ A) * keep / (1-p), in place on grad_x (M x K, unit column stride); returns grad_x."""
    m, k = grad_x.shape
    r = grad_a.shape[1]
    bm, bk = _blocks(k)
    grid = (triton.cdiv(m, bm), triton.cdiv(k, bk))
    _grad_x_kernel[grid](grad_x, grad_a.contiguous(), weight_a.contiguous(), seed, m, k, grad_x.stride(0), p,
                         1.0 / (1.0 - p), R=r, BLOCK_M=bm, BLOCK_K=bk)
    return grad_x
