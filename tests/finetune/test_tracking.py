"""Experiment tracking of 04 through transformers' integrations (TensorBoard, MLflow's local file store, W&B offline),
for real: the run's name, the logged hyperparameters and curves, the run ids in train_log.json, a resumed run
continuing the same tracker runs, and 05's metrics landing in those runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nbutils.finetune import FinetuneConfig
from nbutils.finetune import tracking as tk
from tests.support.finetune import TOPICS
from tests.support.tiny_base import tiny_base


def test_report_to_accepts_several_refuses_unknown_and_leaves_out_missing(monkeypatch):
    assert FinetuneConfig.from_params(profile="full", report_to="tensorboard,mlflow").report_to == \
        ["tensorboard", "mlflow"]
    assert FinetuneConfig.from_params(profile="demo").report_to == ["none"]
    assert FinetuneConfig.from_params(profile="full").report_to == ["tensorboard"]
    assert tk.choose_trackers(["none"]) == ([], [])
    with pytest.raises(tk.UnknownTrackerError, match="'comet'"):
        tk.choose_trackers(["tensorboard", "comet"])
    monkeypatch.setattr(tk, "installed", lambda name: name != "wandb")
    chosen, notes = tk.choose_trackers(["wandb", "tensorboard", "tensorboard"])
    assert chosen == ["tensorboard"] and "wandb is not installed" in notes[0]


def test_run_name_comes_from_the_runners_run_folder_and_the_users_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(tk.RUN_DIR_ENV, str(tmp_path / "runs" / "20261206-101500-full"))
    assert tk.default_run_name("full") == "20261206-101500-full"
    monkeypatch.delenv(tk.RUN_DIR_ENV)
    assert tk.default_run_name("demo").endswith("-demo")
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path), report_to=["mlflow"])
    t = tk.plan_tracking(cfg, resuming=False)
    assert t.environment()["MLFLOW_TRACKING_URI"] == (tmp_path / "runs" / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert "MLFLOW_TRACKING_URI" not in t.environment()          # a server the user set is used, not overridden
    with tk.tracker_environment(t):
        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "nbutils"
    assert "MLFLOW_EXPERIMENT_NAME" not in os.environ              # restored after training


def test_sft_config_reports_to_the_chosen_trackers_under_the_run_name(tmp_path):
    from nbutils.finetune import train as tr
    from nbutils.finetune.runtime import resolve_runtime

    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path), report_to=["tensorboard"],
                                     run_name="my-run")
    rt = resolve_runtime(cfg)
    args = tr.build_sft_config(cfg, rt, False, tk.plan_tracking(cfg, resuming=False))
    assert args.report_to == ["tensorboard"] and args.run_name == "my-run"
    assert tr.build_sft_config(cfg, rt, False).report_to == []     # no tracking: nothing reported


def tensorboard_tags(log_dir: Path) -> dict[str, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, set[str]] = {"scalars": set(), "tensors": set()}
    for events in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags["scalars"] |= set(acc.Tags()["scalars"])
        tags["tensors"] |= set(acc.Tags()["tensors"])
    return tags


@pytest.mark.slow
def test_04_tracks_in_tensorboard_mlflow_and_wandb_offline_resumes_the_same_runs_and_05_logs_there(
        tmp_path, embedded_model_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'nbutils[tracking]')")
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'nbutils[tracking]')")
    from mlflow.tracking import MlflowClient

    from nbutils import evaluate as ev
    from nbutils.finetune import train as tr

    trackers = ["tensorboard", "mlflow"]
    try:
        import wandb  # noqa: F401

        trackers.append("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_SILENT", "true")
    except ImportError:
        pass
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tk.RUN_DIR_ENV, raising=False)
    d = tmp_path / "data"
    base = tiny_base(d / "models" / "base" / "tiny-smol", embedded_model_path, max_positions=512)
    rows = [{"Instruction": f"What does the paper on {t} address?", "Input": "",
             "Output": f"The paper on {t} addresses the cost of training {t} models."} for t in TOPICS]
    (d / "arxiv_instruction_dataset.json").write_text(json.dumps(rows * 2))
    params = dict(base_model=str(base), lora_r=4, lora_alpha=8, lora_dropout=0.0, max_length=64,
                  per_device_train_batch_size=2, max_eval_samples=2, logging_steps=1, eval_steps=100, save_steps=2,
                  warmup_steps=0, report_to=trackers, run_name=None)
    first = tr.train(FinetuneConfig.from_params(profile="demo", data_dir=str(d), max_steps=2, **params),
                     verbose=False)
    rec = first.log["tracking"]
    run_name = rec["run_name"]
    assert run_name.endswith("-demo") and set(rec["report_to"]) == set(trackers)

    # TensorBoard: under data_dir/runs/<run name>/tensorboard, the curves and the resolved config + runtime
    tb = d / "runs" / run_name / "tensorboard"
    assert Path(rec["tensorboard"]["log_dir"]) == tb.resolve()
    tags = tensorboard_tags(tb)
    assert "train/loss" in tags["scalars"]
    assert {"nbutils/config/text_summary", "nbutils/runtime/text_summary"} <= tags["tensors"]

    # MLflow: the local file store under data_dir/runs/mlruns, params = TrainingArguments + ours, the loss curve
    client = MlflowClient(tracking_uri=rec["mlflow"]["tracking_uri"])
    assert rec["mlflow"]["tracking_uri"] == (d / "runs" / "mlruns").resolve().as_uri()
    run = client.get_run(rec["mlflow"]["run_id"])
    assert run.info.run_name == run_name
    assert run.data.params["nbutils.config.lora_r"] == "4" and run.data.params["nbutils.runtime.device"] == "cpu"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]

    if "wandb" in trackers:
        wb = rec["wandb"]
        assert wb["mode"] == "offline" and list((d / "runs" / run_name).rglob(f"*{wb['run_id']}*"))

    # resumed (max_steps is not part of what is trained): the same run name, the same MLflow run, curves continue
    second = tr.train(FinetuneConfig.from_params(profile="demo", data_dir=str(d), max_steps=4, **params),
                      verbose=False)
    assert second.log["resumed_from"] and second.log["tracking"]["run_name"] == run_name
    assert second.log["tracking"]["mlflow"]["run_id"] == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]

    # 05 logs its metrics into the runs 04 recorded
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(d), base_model=str(base), max_examples=2,
                                    max_new_tokens=3, batch_size=2, n_bootstrap=50)
    result = ev.run(cfg, verbose=False)
    done = result.report["tracking"]
    assert not any(str(v).startswith("failed") for v in done.values()), done
    assert set(done) == set(trackers)
    assert "eval05/rougeL/tuned" in tensorboard_tags(tb)["scalars"]
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["eval05/rougeL/tuned"] == pytest.approx(result.metrics["rougeL"]["tuned"])
