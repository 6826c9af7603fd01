"""Experiment tracking for stage 04 through transformers' own integrations (`report_to`): TensorBoard, Weights &
Biases, MLflow, several at once, or none.

- The run's name is the run folder's: the runner's `data_dir/runs/<time>-<profile>/` (it exports
  NBUTILS_RUN_DIR), else a fresh `<UTC time>-<profile>`; a resumed training run keeps the name and the tracker
  runs it started (checkpoint_dir/tracking.json), so its curves continue.
- Where things go, unless the environment says otherwise: TensorBoard event files in
  `<tracking_dir>/<run name>/tensorboard/` (tracking_dir = data_dir/runs: `tensorboard --logdir data/runs` compares
  runs); W&B's files in `<tracking_dir>/<run name>/` (WANDB_DIR), project WANDB_PROJECT or "nbutils"; MLflow's file
  store `<tracking_dir>/mlruns` when MLFLOW_TRACKING_URI is unset, experiment MLFLOW_EXPERIMENT_NAME or "nbutils".
  Keys come from the environment only (WANDB_API_KEY, MLflow's own variables); WANDB_MODE=offline works offline.
- Hyperparameters: transformers logs the TrainingArguments and the model config; `TrackerRecorder`
  (callbacks.py) adds the resolved FinetuneConfig and the runtime choices (device, dtype, attention, packing,
  memory mode...) and records each tracker's run id, which train_log.json carries (its "tracking" entry) so that
  05 logs its metrics to the same run (nbutils.evaluate.tracking).
A tracker whose package is not installed is left out with a note (the run goes on untracked by it).
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..io import read_json

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
RUN_DIR_ENV = "NBUTILS_RUN_DIR"   # set by `python -m nbutils run` for the notebooks it executes
TRACKING_FILE = "tracking.json"   # in checkpoint_dir: the tracker runs a resumed training run continues
DEFAULT_PROJECT = "nbutils"
MLFLOW_PARAM_CHARS = 250          # MLflow's (and transformers') limit on a parameter's value


class UnknownTrackerError(ValueError):
    """report_to names something other than none/tensorboard/wandb/mlflow."""


def installed(tracker: str) -> bool:
    return importlib.util.find_spec(TRACKER_PACKAGES[tracker]) is not None


def choose_trackers(report_to: list[str]) -> tuple[list[str], list[str]]:
    """(trackers to use, notes): unknown names refused, 'none' means none, missing packages left out with a note."""
    names = [str(n).strip().lower() for n in report_to if str(n).strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UnknownTrackerError(f"report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; expected some of "
                                  f"{', '.join(TRACKERS)}")
    chosen, notes = [], []
    for n in dict.fromkeys(names):
        if n == "none":
            continue
        if installed(n):
            chosen.append(n)
        else:
            notes.append(f"{n} is not installed (pip install 'nbutils[tracking]'): this run is not tracked there")
    return chosen, notes


def default_run_name(profile: str) -> str:
    """The runner's run folder's name when it runs us, else `<UTC time>-<profile>` (the runner's format)."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir and Path(run_dir).name:
        return Path(run_dir).name
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{profile}"


@dataclass
class Tracking:
    """Where this training run is tracked: trackers, run name, folders, environment set for the integrations."""

    report_to: list[str]
    run_name: str
    tracking_dir: str
    notes: list[str] = field(default_factory=list)
    resumed: dict = field(default_factory=dict)   # tracking.json of the checkpoint being resumed

    @property
    def run_dir(self) -> Path:
        return Path(self.tracking_dir) / self.run_name

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    def environment(self) -> dict[str, str]:
        """Variables the integrations read, for values the user's environment leaves unset (it always wins)."""
        env: dict[str, str] = {}
        if "wandb" in self.report_to:
            env.update({"WANDB_DIR": str(self.run_dir), "WANDB_PROJECT": DEFAULT_PROJECT})
            if self.resumed.get("wandb", {}).get("run_id"):
                env.update({"WANDB_RUN_ID": self.resumed["wandb"]["run_id"], "WANDB_RESUME": "allow"})
        if "mlflow" in self.report_to:
            env.update({"MLFLOW_EXPERIMENT_NAME": DEFAULT_PROJECT})
            if not os.environ.get("MLFLOW_TRACKING_URI"):   # MLflow 3 keeps its file store behind an opt-in
                env.update({"MLFLOW_TRACKING_URI": (Path(self.tracking_dir) / "mlruns").resolve().as_uri(),
                            "MLFLOW_ALLOW_FILE_STORE": "true"})
            if self.resumed.get("mlflow", {}).get("run_id"):
                env["MLFLOW_RUN_ID"] = self.resumed["mlflow"]["run_id"]
        return {k: v for k, v in env.items() if not os.environ.get(k)}

    def describe(self) -> str:
        if not self.report_to:
            return "tracking: none" + "".join(f"\n  note: {n}" for n in self.notes)
        where = {"tensorboard": f"TensorBoard in {self.tensorboard_dir}",
                 "wandb": f"W&B project {os.environ.get('WANDB_PROJECT') or DEFAULT_PROJECT} "
                          f"({os.environ.get('WANDB_MODE') or 'online'})",
                 "mlflow": "MLflow at " + (os.environ.get("MLFLOW_TRACKING_URI")
                                           or self.environment().get("MLFLOW_TRACKING_URI", ""))}
        return (f"tracking run {self.run_name!r}: " + "; ".join(where[t] for t in self.report_to)
                + "".join(f"\n  note: {n}" for n in self.notes))


def plan_tracking(cfg, resuming: bool) -> Tracking:
    """The trackers, run name and folders for this run; a resumed run keeps its name and tracker runs."""
    chosen, notes = choose_trackers(list(cfg.report_to))
    resumed = read_json(Path(cfg.checkpoint_dir) / TRACKING_FILE) if resuming and \
        (Path(cfg.checkpoint_dir) / TRACKING_FILE).exists() else {}
    name = cfg.run_name or resumed.get("run_name") or default_run_name(cfg.profile)
    return Tracking(report_to=chosen, run_name=name, tracking_dir=str(cfg.tracking_dir), notes=notes,
                    resumed=resumed if resumed.get("run_name") == name else {})


@contextmanager
def tracker_environment(tracking: Tracking) -> Iterator[None]:
    """The integrations' variables set for the duration of training, then restored."""
    env = tracking.environment()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def flat_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """{'prefix.key': 'value'} with values as short strings (MLflow keeps at most 250 characters)."""
    out = {}
    for k, v in values.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        out[f"{prefix}.{k}"] = text if len(text) <= MLFLOW_PARAM_CHARS else text[:MLFLOW_PARAM_CHARS - 1] + "…"
    return out


def finish_trackers(tracking: Tracking) -> None:
    """Close what the integrations leave open (W&B's run lives until the process ends otherwise)."""
    if "wandb" in tracking.report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()   # W&B keeps its settings (WANDB_DIR...) process-wide: a next run in this kernel reads its own


def tensorboard_logdir(log: dict, tracking_dir: str | Path) -> str | None:
    """The folder to point TensorBoard at (tracking_dir: every run side by side) when this run logged there."""
    if "tensorboard" not in (log.get("tracking") or {}).get("report_to", []) or not installed("tensorboard"):
        return None
    return str(tracking_dir)
