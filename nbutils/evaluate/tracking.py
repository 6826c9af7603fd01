"""05's metrics into the experiment run 04 trained in: the run ids 04 recorded in the adapter's train_log.json
("tracking", nbutils.finetune.tracking) say where. TensorBoard: scalars `eval05/...` in the run's event folder;
MLflow: metrics on the same run (MlflowClient, the run may be finished); W&B: the same run resumed by id
(resume="allow", WANDB_MODE from the environment) with the metrics in its summary. A tracker that cannot be
reached is reported and skipped: the evaluation itself is never lost to it."""
from __future__ import annotations

import os
import re
import time
from typing import Any

PREFIX = "eval05"


def flat_metrics(report: dict) -> dict[str, float]:
    """{'eval05/rougeL/tuned': 0.31, 'eval05/rougeL/delta': ..., 'eval05/harness/arc_easy/tuned': ...}."""
    out: dict[str, float] = {}
    for name, m in report.get("metrics", {}).items():
        for key in ("base", "tuned", "delta"):
            if isinstance(m.get(key), (int, float)):
                out[f"{PREFIX}/{name}/{key}"] = float(m[key])
    for task, m in ((report.get("harness") or {}).get("tasks") or {}).items():
        for key in ("base", "tuned", "delta"):
            if isinstance(m.get(key), (int, float)):
                out[f"{PREFIX}/harness/{task}/{m['metric']}/{key}"] = float(m[key])
        out[f"{PREFIX}/harness/{task}/dropped"] = float(m["dropped"])
    return {re.sub(r"[^0-9A-Za-z_\-./ :]", "_", k): v for k, v in out.items()}


def log_tensorboard(info: dict, metrics: dict[str, float], step: int) -> str:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=info["log_dir"])
    for k, v in metrics.items():
        writer.add_scalar(k, v, step)
    writer.close()
    return info["log_dir"]


def log_mlflow(info: dict, metrics: dict[str, float], step: int) -> str:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = info["tracking_uri"]
    if uri.startswith("file:"):   # 04's default local store: MLflow 3 keeps it behind an opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(info["run_id"], metrics=items[i:i + 1000])
    return f"run {info['run_id']}"


def log_wandb(info: dict, metrics: dict[str, float], step: int) -> str:
    import wandb

    run = wandb.init(id=info["run_id"], project=info.get("project"), entity=info.get("entity"), resume="allow",
                     dir=info.get("dir"), reinit="finish_previous")
    try:
        run.summary.update(metrics)
    finally:
        run.finish()
    return f"run {info['run_id']}"


LOGGERS = {"tensorboard": log_tensorboard, "mlflow": log_mlflow, "wandb": log_wandb}


def log_to_trackers(tracking: dict | None, report: dict, step: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Log 05's metrics to each run 04 recorded; returns {tracker: where, or 'failed: reason'}."""
    if not tracking:
        return {}
    metrics = flat_metrics(report)
    done: dict[str, Any] = {}
    for tracker, log in LOGGERS.items():
        info = tracking.get(tracker)
        if not isinstance(info, dict) or not (info.get("run_id") or info.get("log_dir")):
            continue
        try:
            done[tracker] = log(info, metrics, step)
        except Exception as e:  # an unreachable tracker must not lose the evaluation
            done[tracker] = f"failed: {type(e).__name__}: {e}"
        if verbose:
            print(f"{tracker}: {len(metrics)} metrics of 05 -> {done[tracker]}")
    return done
