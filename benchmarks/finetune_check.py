"""Correctness of stage 04's attention path on the model it trains: PyTorch's varlen kernel vs SDPA (outputs and
gradients, GPU), and that packed samples cannot see each other (a sample's logits packed after another == alone;
the original's EOS-joined rows shown for contrast), for each attention available; on a GPU also the LoRA dropout
kernels (benchmarks.finetune_kernels) and the card's bf16 matmul rate.

    python -m benchmarks.finetune_check [--json out.json] [--cpu]
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import environment, is_main, llama_config, log, matmul_tflops, set_attention, write_json
from .finetune_kernels import check_dropout_kernels


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
            # the original's packing: no boundary
            cross = model(input_ids=packed, use_cache=False).logits[0, 37:].float()
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
        write_json(args.json, {"kind": "check", "env": environment(), **out})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    p.add_argument("--cpu", action="store_true", help="on the CPU even where a GPU is present")
    a = p.parse_args(argv)
    if not a.cpu:
        import torch

        if torch.cuda.is_available():
            log(f"bf16 8192^3 matmul: {matmul_tflops():.0f} TFLOP/s")
    cmd_check(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
