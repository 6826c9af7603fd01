"""Trainer callbacks of stage 04: stop at the first non-finite loss, add tokens/s and peak memory to the log that
checkpoints carry (so a resumed run keeps its whole log), and log the config/runtime to the experiment trackers
and record their run ids (TrackerRecorder; tracking.py plans the trackers)."""
from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..io import write_json
from .tracking import TRACKING_FILE, flat_params

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


class TrackerRecorder(TrainerCallback):
    """After the integrations set up their runs (they come first in the callback list): logs the resolved config
    and runtime as hyperparameters and records each run's id (`self.record`, also written to
    checkpoint_dir/tracking.json so a resumed run continues the same tracker runs)."""

    def __init__(self, tracking, config: dict, runtime: dict, checkpoint_dir: str | Path):
        self.tracking, self.config, self.runtime = tracking, config, runtime
        self.checkpoint_dir = Path(checkpoint_dir)
        self.record: dict[str, Any] = {"run_name": tracking.run_name, "report_to": list(tracking.report_to)}
        self.integrations: list = []

    def bind(self, callbacks: list) -> None:
        """The trainer's callbacks: the integration objects are found among them (and pointed at our folders)."""
        self.integrations = list(callbacks)
        for cb in self.integrations:
            if type(cb).__name__ == "TensorBoardCallback":
                cb.logging_dir = str(self.tracking.tensorboard_dir)

    def _find(self, name: str):
        return next((cb for cb in self.integrations if type(cb).__name__ == name), None)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        import dataclasses

        runtime = dataclasses.asdict(self.runtime) if dataclasses.is_dataclass(self.runtime) else self.runtime
        hparams = {"config": self.config, "runtime": runtime}   # the runtime as resolved once the trainer was built
        if "tensorboard" in self.tracking.report_to:
            self._tensorboard(hparams)
        if "wandb" in self.tracking.report_to:
            self._wandb(hparams)
        if "mlflow" in self.tracking.report_to:
            self._mlflow(hparams)
        write_json(self.checkpoint_dir / TRACKING_FILE, self.record)

    def _tensorboard(self, hparams: dict) -> None:
        cb = self._find("TensorBoardCallback")
        writer = getattr(cb, "tb_writer", None)
        if writer is None:
            return
        for key, values in hparams.items():
            writer.add_text(f"nbutils/{key}", "```json\n" + json.dumps(values, indent=1, default=str) + "\n```")
        writer.flush()
        self.record["tensorboard"] = {"log_dir": str(Path(writer.log_dir).resolve())}

    def _wandb(self, hparams: dict) -> None:
        import wandb

        if wandb.run is None:
            return
        wandb.config.update({f"nbutils_{k}": v for k, v in hparams.items()}, allow_val_change=True)
        run = wandb.run
        self.record["wandb"] = {"run_id": run.id, "project": run.project, "entity": run.entity,
                                "dir": str(Path(run.dir).resolve().parent.parent),
                                "mode": os.environ.get("WANDB_MODE", "online"), "url": getattr(run, "url", None)}

    def _mlflow(self, hparams: dict) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return
        if not self.tracking.resumed.get("mlflow"):   # params are write-once in MLflow: a resumed run has them
            params = {**flat_params("nbutils.config", hparams["config"]),
                      **flat_params("nbutils.runtime", hparams["runtime"])}
            items = list(params.items())
            for i in range(0, len(items), 100):      # at most 100 per call
                mlflow.log_params(dict(items[i:i + 100]))
        self.record["mlflow"] = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                 "tracking_uri": mlflow.get_tracking_uri()}
