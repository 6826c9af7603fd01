"""Stage 04's LoRA dropout Triton kernels (nbutils.kernels.fused_lora_triton) on a GPU: bf16 errors against PyTorch
with the same mask, and time against what PEFT runs for the same work (PyTorch's dropout + matmul); optionally a
sweep of launch settings (the TUNING table in that module was chosen from it).

    python -m benchmarks.finetune_kernels [--sweep] [--rng cheap] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import environment, log, timed_us, write_json


def check_dropout_kernels(m: int = 8192, r: int = 64, p: float = 0.1, sweep: bool = False) -> dict:
    """nbutils.kernels.fused_lora_triton on the GPU: the three kernels vs PyTorch with the same mask (bf16), and
    their time against what PEFT runs for the same work (dropout + the lora_A matmul; the two backward products with
    the mask multiply and the add). With sweep, every launch setting of the grid below is timed too."""
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
        row["us_fwd_pytorch"] = timed_us(lambda: drop(x, p, True) @ a_w.t())
        row["us_bwd_pytorch"] = timed_us(lambda: (ga.t() @ xd, gx + (ga @ a_w) * mask / (1 - p)))
        row["us_fwd_kernel"] = timed_us(lambda: kernels.dropout_matmul(x, a_w, 7, p))
        row["us_grad_a_kernel"] = timed_us(lambda: kernels.dropout_matmul_grad_a(ga, x, 7, p))
        row["us_grad_x_kernel"] = timed_us(lambda: kernels.dropout_matmul_grad_x_(gx, ga, a_w, 7, p))
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
                        times.append((timed_us(lambda: calls[name](dict(t)), reps=10), t))
                    except Exception as e:  # a setting that does not compile (shared memory) is just skipped
                        times.append((float("inf"), {**t, "error": type(e).__name__}))
                times.sort(key=lambda z: z[0])
                row[f"sweep_{name}"] = [[us, t] for us, t in times[:6]]
        res[f"K={k}"] = row
        x = gx = xd = mask = None   # freed before the next K (a del would leave the lambdas' names unbound)
        torch.cuda.empty_cache()
    return res


def use_cheap_draws() -> None:
    """Diagnostic: swap the kernels' Philox draws for one multiply per draw (before anything compiles), to see how
    much of the kernels' time the random numbers take."""
    from nbutils.kernels import fused_lora_triton as kernels

    from .cheap_draws import draws_cheap

    kernels._draws = draws_cheap


def cmd_kernels(args) -> dict:
    if args.rng == "cheap":
        use_cheap_draws()
    out = {"kind": "kernels", "rng": args.rng, "env": environment(), **check_dropout_kernels(sweep=args.sweep)}
    log(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="time every launch setting of a small grid too")
    p.add_argument("--json", default=None)
    p.add_argument("--rng", default="philox", choices=("philox", "cheap"),
                   help="cheap: a one-multiply stand-in for the Philox draws (diagnostic: the kernels' time "
                        "without the random numbers; masks are then not random)")
    cmd_kernels(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
