"""Issue 23: what experiment tracking (report_to) adds to 04's step time (target <= 1 %).

    python -m benchmarks.tracking_overhead                                   # CPU, tiny random model, ~3 minutes
    python -m benchmarks.tracking_overhead --shape smollm2-135m --profile full --steps 40 \\
        --tokenizer .devcarry/tok --out $OUT/tracking.json                   # GPU

Two measurements, both with the stage's own code:
1. The stage: `nbutils.finetune.train.train` on a random-weight model of the named shape (no hub) for `--steps`
   optimizer steps, once per tracker set (`none` first and last, to see the drift; then tensorboard, mlflow, wandb
   offline, and all of them, each that is installed), logging every `--logging-steps` steps (the full profile's
   5; 1 is the worst case). The mean time of a step (after `--warmup` steps) per case, and the difference to `none`.
2. The integrations' own cost per log call, isolated: each transformers callback's `on_log` with a training log
   entry, timed over many calls after its set-up. Divided by (logging_steps x step time) this is the share a
   tracker adds at any model size; the stage's differences in 1 are within the step time's noise when small.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from benchmarks.common import SHAPES, build_random_model
from benchmarks.harness_cost import VOCAB

CASES = {"none": ["none"], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "wandb": ["wandb"],
         "all": ["tensorboard", "mlflow", "wandb"]}


class StepTimer(TrainerCallback):
    """Wall time from one optimizer step's start to the next one's (so the logging after a step, where the trackers
    work, is inside it), the GPU synchronised at each mark; the last step ends at on_train_end."""

    def __init__(self):
        self.times: list[float] = []
        self._t: float | None = None

    def _mark(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._t is not None:
            self.times.append(now - self._t)
        self._t = now

    def on_step_begin(self, args, state, control, **kwargs):
        self._mark()

    def on_train_end(self, args, state, control, **kwargs):
        self._mark()


def build_base(shape: str, tokenizer_dir: str, folder: Path, device: str) -> Path:
    """A random-weight model of `shape` with the given tokenizer, saved to `folder` (04 loads it by path)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    build_random_model({**SHAPES[shape], "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
                       device, folder)
    tok.save_pretrained(folder)
    return folder


def write_rows(data_dir: Path, n: int, answer_words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    w = lambda k: " ".join(rng.choice(VOCAB) for _ in range(k))  # noqa: E731
    rows = [{"Instruction": w(15) + "?", "Input": w(60), "Output": w(answer_words)} for _ in range(n)]
    (data_dir / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))


def available(trackers: list[str]) -> bool:
    from nbutils.finetune.tracking import installed

    return all(t == "none" or installed(t) for t in trackers)


def time_stage(args, base: Path, data_dir: Path, case: str, trackers: list[str], run: int) -> dict:
    from nbutils.finetune import FinetuneConfig
    from nbutils.finetune.train import train

    timer = StepTimer()
    cfg = FinetuneConfig.from_params(
        profile=args.profile, data_dir=str(data_dir), base_model=str(base), load_in_4bit=False,
        max_steps=args.steps, logging_steps=args.logging_steps, eval_steps=10**6, save_steps=10**6,
        max_eval_samples=2, max_length=args.max_length, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, warmup_steps=0, resume=False, report_to=trackers, lora_r=16, lora_alpha=16,
        checkpoint_dir=str(data_dir / f"ckpt-{case}-{run}"), output_dir=str(data_dir / f"adapter-{case}-{run}"))
    train(cfg, extra_callbacks=[timer], verbose=False)
    steps = timer.times[args.warmup:]
    return {"case": case, "run": run, "report_to": trackers, "mean_step_s": statistics.fmean(steps),
            "median_step_s": statistics.median(steps),
            "stdev_step_s": statistics.stdev(steps) if len(steps) > 1 else 0.0,
            "steps_timed": len(steps)}


def time_on_log(tracking_dir: Path, calls: int) -> dict[str, float]:
    """Milliseconds per on_log call of each installed integration, after its set-up (a real run of each)."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

    from nbutils.finetune.tracking import installed

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("MLFLOW_TRACKING_URI", (tracking_dir / "mlruns").resolve().as_uri())
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ["WANDB_DIR"] = str(tracking_dir)
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "on-log-timing"   # (the fluent API remembers the stage runs' experiment)
    args = TrainingArguments(output_dir=str(tracking_dir / "out"), report_to="none", run_name="on-log-timing")
    state, control = TrainerState(), TrainerControl()
    logs = {"loss": 1.234, "grad_norm": 0.5, "learning_rate": 2e-4, "epoch": 0.1, "tokens_per_s": 1234.5,
            "num_input_tokens_seen": 10**6, "peak_gpu_mem_gib": 10.5}
    out = {}
    for name, cls in (("tensorboard", TensorBoardCallback), ("mlflow", MLflowCallback), ("wandb", WandbCallback)):
        if not installed(name):
            continue
        cb = cls()
        if name == "tensorboard":
            cb.logging_dir = str(tracking_dir / "tb")
        cb.on_train_begin(args, state, control, model=None)
        for step in range(3):
            state.global_step = step
            cb.on_log(args, state, control, logs=dict(logs))
        t = time.perf_counter()
        for step in range(calls):
            state.global_step = 3 + step
            cb.on_log(args, state, control, logs=dict(logs))
        out[name] = round((time.perf_counter() - t) / calls * 1000, 3)
        cb.on_train_end(args, state, control)
        if name == "wandb":
            import wandb

            wandb.finish()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", default="data/models/base/SmolLM2-135M-Instruct")
    ap.add_argument("--profile", default="demo", choices=("demo", "full"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--logging-steps", type=int, default=5, help="the full profile's 5; 1: log every step")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--cases", default="none,tensorboard,mlflow,wandb,all,none")
    ap.add_argument("--on-log-calls", type=int, default=200)
    ap.add_argument("--step-s", type=float, default=4.7, help="the step time on_log's share is taken of when no "
                    "`none` case runs (4.7 s: Llama-3-8B QLoRA, 16 x 2048 tokens a step, H100, RESULTS.md)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="tracking_overhead_"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    write_rows(data_dir, args.steps * args.batch + 8, answer_words=args.max_length // 3)
    base = build_base(args.shape, args.tokenizer, tmp / "base", "cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    runs, skipped = [], []
    for run, case in enumerate(c.strip() for c in args.cases.split(",") if c.strip()):
        if not available(CASES[case]):
            skipped.append(case)
            continue
        runs.append(time_stage(args, base, data_dir, case, CASES[case], run))
        print(json.dumps(runs[-1]), flush=True)
    none = [r["mean_step_s"] for r in runs if r["case"] == "none"]
    ref = statistics.fmean(none) if none else args.step_s
    for r in runs:
        r["vs_none_pct"] = round(100 * (r["mean_step_s"] - ref) / ref, 2)
    per_log = time_on_log(tmp / "onlog", args.on_log_calls)
    out = {"shape": args.shape, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "profile": args.profile, "reference_step_s": round(ref, 4), "steps": args.steps, "warmup": args.warmup,
           "logging_steps": args.logging_steps,
           "batch": args.batch, "max_length": args.max_length, "none_drift_pct": round(
               100 * (max(none) - min(none)) / ref, 2) if len(none) > 1 else None,
           "stage": runs, "skipped_not_installed": skipped, "on_log_ms": per_log,
           "on_log_share_pct": {k: round(100 * v / 1000 / (args.logging_steps * ref), 3) for k, v in per_log.items()}}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
