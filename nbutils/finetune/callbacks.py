"""Trainer callbacks of stage 04: stop at the first non-finite loss, and add tokens/s and peak memory to the log
that checkpoints carry (so a resumed run keeps its whole log)."""
from __future__ import annotations

import math
import resource
import time

from transformers import TrainerCallback

LOG_KEYS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s",
            "num_input_tokens_seen", "peak_gpu_mem_gib", "peak_rss_gib")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss: continuing would only waste GPU hours."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Raise NonFiniteLossError as soon as a logged training or eval loss is NaN or inf."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss", "grad_norm"):
            v = (logs or {}).get(key)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                raise NonFiniteLossError(
                    f"{key} became {v} at step {state.global_step} (lr={logs.get('learning_rate')}). Training "
                    "stopped. Usual fixes: lower learning_rate, keep max_grad_norm small (0.3), use bf16 instead of "
                    "fp16 when the GPU supports it, or check the data for empty/garbled rows. The last good "
                    "checkpoint is in checkpoint_dir (resume=True continues from it).")


def peak_memory() -> dict:
    """Peak GPU memory allocated (GiB) on CUDA, else the process's peak resident memory (GiB)."""
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


class TrainLogRecorder(TrainerCallback):
    """Adds tokens/s (training time only, evals excluded) and peak memory to every log entry of the Trainer's
    state.log_history, which checkpoints save and resume restores, so a resumed run keeps its whole log."""

    def __init__(self):
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_tokens = time.time(), state.num_input_tokens_seen

    def on_evaluate(self, args, state, control, **kwargs):
        self._last_time = time.time()  # evaluation time is not training throughput

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.log_history or state.log_history[-1].get("step") != state.global_step:
            return
        extra = dict(peak_memory())
        if "loss" in (logs or {}) and self._last_time is not None:
            dt = time.time() - self._last_time
            dtok = state.num_input_tokens_seen - self._last_tokens
            extra["tokens_per_s"] = round(dtok / dt, 1) if dt > 0 else None
            self._last_time, self._last_tokens = time.time(), state.num_input_tokens_seen
        state.log_history[-1].update(extra)


def log_entries(log_history: list[dict]) -> list[dict]:
    """The per-log-step entries (train loss or eval loss) of a Trainer's log_history, with the fields we keep."""
    return [{k: e[k] for k in LOG_KEYS if k in e} for e in log_history if "loss" in e or "eval_loss" in e]
