"""Issue 25: a quality benchmark for stage 04's recipe: 04 + 05 through the runner (`python -m nbutils run --profile
full --only 04,05`) on real weights (the embedded SmolLM2-135M-Instruct) and a real dataset, so that a speed change
that costs learning shows up: eval loss against GPU-seconds (04's train_log.json) and 05's tuned-minus-base deltas
with their paired-bootstrap intervals (reports/metrics.json).

The dataset: ../shared/datasets/paperqa/ (rsonnen/rag-eval-arxiv, MIT): 1,462 LLM-written question/answer pairs on
382 recent arXiv papers (cs.CV and q-bio). `prepare` writes them as 03's `triples.jsonl` (instruction = the
question, input empty, output = the answer, paper_id = the arXiv id), so the split step (nbutils.splits) splits
them by paper: no paper has rows on both sides.

    python -m benchmarks.quality prepare /work/shared/datasets/paperqa --out .whl/quality/triples.jsonl
    # on the GPU machine (the model provisioned once with `python -m nbutils provision-model --data-dir D`):
    python -m benchmarks.quality run --triples .whl/quality/triples.jsonl --base-model D/models/base/SmolLM2-135M-Instruct \
        --work /tmp/quality --variant default --variant accum1:gradient_accumulation_steps=1 --eval-steps 4 \
        --json $OUT/quality.json
    python -m benchmarks.quality summary $OUT/quality.json

Each variant is the `full` profile plus `key=value` overrides of 04's parameters (`04.` prefix implied), in its own
data folder; `--no-eval-after` names variants that run 04 only. `--eval-steps` only makes the eval-loss curve
denser (04 evaluates every N optimizer steps and before the first); it changes no training.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PAPERQA_FILES = ("computer_vision_questions.json", "computational_biology_questions.json")
SHOWN_METRICS = ("rougeL", "rouge1", "bleu", "ref_nll", "answer_words", "hit_max_new_tokens")


# ------------------------------------------------------------------------------------------------ the dataset
def paper_id(source_document: str) -> str:
    """'papers/2510.12345v1.pdf' -> '2510.12345v1'."""
    return Path(str(source_document)).stem


def paperqa_rows(folder: str | Path) -> tuple[list[dict], dict]:
    """The question/answer pairs of every paperqa file as triples.jsonl rows, and what was read. A row without a
    question, an answer or a source paper is skipped and counted (never silently)."""
    rows, skipped, per_file = [], 0, {}
    for name in PAPERQA_FILES:
        path = Path(folder) / name
        obj = json.loads(path.read_text())
        qs = obj.get("questions") if isinstance(obj, dict) else None
        if not isinstance(qs, list):
            raise ValueError(f"{path}: expected an object with a 'questions' list, found "
                             f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
        kept = 0
        for q in qs:
            question, answer = str(q.get("question") or "").strip(), str(q.get("answer") or "").strip()
            source = q.get("source_document")
            if not (question and answer and source):
                skipped += 1
                continue
            rows.append({"instruction": question, "input": "", "output": answer, "paper_id": paper_id(source),
                         "page": 0, "source": f"paperqa/{name}"})
            kept += 1
        per_file[name] = kept
    info = {"rows": len(rows), "papers": len({r["paper_id"] for r in rows}), "skipped": skipped,
            "per_file": per_file}
    return rows, info


def write_triples(rows: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


def cmd_prepare(args) -> int:
    rows, info = paperqa_rows(args.folder)
    write_triples(rows, args.out)
    print(f"{info['rows']} rows from {info['papers']} papers ({info['skipped']} skipped) -> {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------ one variant
def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'accum1:gradient_accumulation_steps=1,learning_rate=1e-3' -> ('accum1', {...}); 'default' -> ('default', {})."""
    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {name!r}: {item!r} is not key=value")
        params[key.strip()] = value.strip()
    return name, params


def runner_command(data_dir: Path, base_model: str, params: dict[str, str], eval_steps: int, stages: str) -> list:
    cmd = [sys.executable, "-m", "nbutils", "run", "--profile", "full", "--data-dir", str(data_dir), "--only",
           stages, "-p", "base_model", base_model, "--run-dir", str(data_dir / "run")]
    if eval_steps:
        cmd += ["-p", "04.eval_steps", str(eval_steps)]
    for k, v in params.items():
        cmd += ["-p", k if "." in k else f"04.{k}", v]
    return cmd


def eval_curve(train_log: dict) -> list[dict]:
    """(step, seconds of training, eval loss) for every eval of 04's log. Seconds: the step's share of the run's
    training wall time (train_runtime_s, evals included), so variants of different step counts compare."""
    steps = max(1, int(train_log.get("global_step") or 1))
    secs = float(train_log.get("train_runtime_s") or 0.0)
    return [{"step": e["step"], "train_s": round(secs * e["step"] / steps, 1), "eval_loss": round(e["eval_loss"], 4)}
            for e in train_log.get("log", []) if "eval_loss" in e]


def collect(data_dir: Path) -> dict:
    """What 04 and 05 wrote: the eval curve, steps, tokens, speed; 05's deltas with intervals."""
    out: dict = {}
    log_path = data_dir / "models" / "adapter" / "train_log.json"
    if log_path.exists():
        log = json.loads(log_path.read_text())
        rt = log.get("runtime", {})
        out["finetune"] = {
            "global_step": log.get("global_step"), "train_runtime_s": log.get("train_runtime_s"),
            "tokens_seen": log.get("tokens_seen"), "train_loss": log.get("train_loss"),
            "tokens_per_s": round(log["tokens_seen"] / log["train_runtime_s"], 1)
            if log.get("tokens_seen") and log.get("train_runtime_s") else None,
            "fuse_lora": rt.get("fuse_lora"), "fuse_reason": rt.get("fuse_reason"), "packing": rt.get("packing"),
            "memory_mode": rt.get("memory_mode"), "data": log.get("data"), "eval_curve": eval_curve(log),
            "peak_gpu_mem_gib": max((e.get("peak_gpu_mem_gib") or 0) for e in log.get("log", [{}]) or [{}]),
        }
    metrics_path = data_dir / "reports" / "metrics.json"
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        out["evaluate"] = {k: {f: v.get(f) for f in ("base", "tuned", "delta", "delta_ci", "p_not_better")}
                           for k, v in (m.get("metrics") or {}).items()}
        out["evaluate_n"] = m.get("n_examples")
    split_info = data_dir / "dataset" / "split_info.json"
    if split_info.exists():
        out["split"] = json.loads(split_info.read_text())
    run_json = data_dir / "run" / "run.json"
    if run_json.exists():
        out["stages"] = json.loads(run_json.read_text()).get("stages")
    return out


def run_variant(name: str, params: dict, args, stages: str) -> dict:
    data_dir = Path(args.work) / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    shutil.copy(args.triples, data_dir / "triples.jsonl")
    cmd = runner_command(data_dir, args.base_model, params, args.eval_steps, stages)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=dict(os.environ))
    wall = time.time() - t0
    text = proc.stdout + proc.stderr
    print(f"[{name}] rc={proc.returncode} in {wall:.0f} s\n" + "\n".join(text.splitlines()[-12:]), flush=True)
    res = {"variant": name, "params": params, "stages_run": stages, "rc": proc.returncode, "wall_s": round(wall, 1),
           **collect(data_dir)}
    if proc.returncode:
        res["error"] = text[-1500:]
    return res


def cmd_run(args) -> int:
    variants = [parse_variant(v) for v in args.variant]
    t_end = time.time() + args.deadline_s if args.deadline_s else None
    results = []
    for name, params in variants:
        if t_end and time.time() > t_end:
            print(f"[{name}] skipped: the deadline passed", flush=True)
            continue
        stages = "04" if name in args.no_eval_after else "04,05"
        results.append(run_variant(name, params, args, stages))
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results}, indent=1))
    print_summary(results)
    return 0


# ------------------------------------------------------------------------------------------------ the tables
def fmt_ci(m: dict) -> str:
    lo, hi = m.get("delta_ci") or (None, None)
    if m.get("delta") is None:
        return "-"
    return f"{m['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}]" if lo is not None else f"{m['delta']:+.4f}"


def print_summary(results: list[dict]) -> None:
    print("\n| variant | params | steps | train s | tokens/s | fused LoRA | eval loss (start -> end) | "
          "eval loss by train-seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        f = r.get("finetune") or {}
        curve = f.get("eval_curve") or []
        ends = f"{curve[0]['eval_loss']} -> {curve[-1]['eval_loss']}" if curve else "-"
        pts = " ".join(f"{c['train_s']}s:{c['eval_loss']}" for c in curve)
        print(f"| {r['variant']} | {r.get('params') or 'full profile'} | {f.get('global_step')} | "
              f"{f.get('train_runtime_s')} | {f.get('tokens_per_s')} | {f.get('fuse_lora')} | {ends} | {pts} |"
              + (f" rc={r['rc']}" if r.get("rc") else ""))
    shown = [r for r in results if r.get("evaluate")]
    if shown:
        print("\n| variant | n | " + " | ".join(f"{k}: tuned - base [95 % CI]" for k in SHOWN_METRICS) + " |")
        print("|---|---|" + "---|" * len(SHOWN_METRICS))
        for r in shown:
            ev = r["evaluate"]
            print(f"| {r['variant']} | {r.get('evaluate_n')} | "
                  + " | ".join(fmt_ci(ev[k]) if k in ev else "-" for k in SHOWN_METRICS) + " |")


def cmd_summary(args) -> int:
    print_summary(json.loads(Path(args.json).read_text())["results"])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="paperqa folder -> triples.jsonl (split by paper by the split step)")
    pr.add_argument("folder")
    pr.add_argument("--out", required=True)
    r = sub.add_parser("run", help="04 (+ 05) through the runner, one data folder per variant")
    r.add_argument("--triples", required=True)
    r.add_argument("--base-model", required=True)
    r.add_argument("--work", default="/tmp/quality")
    r.add_argument("--variant", action="append", default=[], help="name[:key=value,...] (04's parameters)")
    r.add_argument("--no-eval-after", nargs="*", default=[], help="variants that run 04 only")
    r.add_argument("--eval-steps", type=int, default=4)
    r.add_argument("--timeout", type=int, default=600, help="seconds for one variant's runner")
    r.add_argument("--deadline-s", type=int, default=0, help="start no variant after this many seconds")
    r.add_argument("--json", default=None)
    s = sub.add_parser("summary")
    s.add_argument("json")
    args = p.parse_args(argv)
    return {"prepare": cmd_prepare, "run": cmd_run, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
