"""Resuming stage 04: what a checkpoint was trained on (a fingerprint of the training-relevant config, the knobs
this machine resolved and the data), whether to continue it, and where checkpoints that are not continued go:
aside, into `<checkpoint_dir>.old-<UTC time>`, never deleted.

Why aside rather than a refusal: changing a knob and rerunning the notebook is the normal way to try something
else, and it should just start fresh; but the old checkpoints may be hours of GPU time (or the change a typo), so
they are kept, and the message names the folder and what differs. Deleting them is the user's call."""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..io import read_json, safetensors_problem, sha256_text, write_json
from .config import FinetuneConfig
from .runtime import Runtime

RUN_CONFIG_FILE = "run_config.json"
# Fields that do not change what is trained: a checkpoint made under other values can be resumed. memory_mode only
# picks gradient_checkpointing/optim, which are fingerprinted as resolved.
OPERATIONAL_FIELDS = {"profile", "data_dir", "dataset_dir", "output_dir", "checkpoint_dir", "merged_dir", "resume",
                      "merge", "save_steps", "save_total_limit", "logging_steps", "eval_steps", "max_steps",
                      "num_train_epochs", "multi_gpu", "num_processes", "per_device_eval_batch_size",
                      "memory_mode", "fuse_lora", "keep_base_weight", "report_to", "run_name", "tracking_dir"}


def training_fields(cfg: FinetuneConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL_FIELDS}


def resolved_knobs(rt: Runtime) -> dict:
    """The knobs left to memory_mode/auto as this machine resolved them: optimizer state only resumes under the
    optimizer that made it."""
    knobs = {"optim": rt.optim, "gradient_checkpointing": rt.gradient_checkpointing,
             "use_liger_kernel": rt.use_liger_kernel}
    if getattr(rt, "fsdp", False):  # sharded checkpoints resume only under FSDP (and DDP ones only without it)
        knobs["fsdp"] = True
    return knobs


def data_hash(train_ds) -> str:
    """The rows' content (not datasets' _fingerprint, which can be random across processes)."""
    return sha256_text(*(json.dumps([r["prompt"], r["completion"]], sort_keys=True) for r in train_ds))


def run_fingerprint(cfg: FinetuneConfig, train_ds, rt: Runtime | None = None) -> str:
    """What a checkpoint was trained on: the training-relevant config, the resolved knobs and the data."""
    relevant = training_fields(cfg)
    if rt is not None:
        relevant.update(resolved_knobs(rt))
    return sha256_text(json.dumps(relevant, sort_keys=True, default=str), data_hash(train_ds))


def run_record(cfg: FinetuneConfig, train_ds, rt: Runtime) -> dict:
    """What run_config.json holds next to the checkpoints: the fingerprint and what went into it (for the diff)."""
    return {"fingerprint": run_fingerprint(cfg, train_ds, rt), "config": cfg.to_dict(),
            "resolved": resolved_knobs(rt), "data_sha256": data_hash(train_ds)}


def read_run_record(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / RUN_CONFIG_FILE
    return read_json(path) if path.exists() else {}


def checkpoints_newest_first(checkpoint_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders, highest step first (as transformers names and finds them)."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why a checkpoint cannot be resumed (a file cut short while saving: a killed run, a full disk), or None.
    Cheap: headers and sizes, not the tensors (a torch .pt/.pth/.bin is a zip whose directory is at its end)."""
    d = Path(ckpt)
    state = d / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (saving did not finish)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except ValueError:
        return "trainer_state.json is not valid JSON (cut short)"
    for f in sorted(d.iterdir()):
        if f.suffix == ".safetensors":
            why = safetensors_problem(f)
        elif f.suffix in (".pt", ".pth", ".bin"):
            why = None if zipfile.is_zipfile(f) else f"{f.name} ({f.stat().st_size} bytes) is cut short or corrupt"
        else:
            continue
        if why:
            return why
    return None


def usable_checkpoint(checkpoint_dir: str | Path) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint that loads, and the (folder, reason) of each newer one that does not."""
    broken = []
    for ckpt in checkpoints_newest_first(checkpoint_dir):
        why = checkpoint_problem(ckpt)
        if why is None:
            return str(ckpt), broken
        broken.append((str(ckpt), why))
    return None, broken


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest checkpoint that loads (a broken newer one is passed over)."""
    return usable_checkpoint(checkpoint_dir)[0]


def set_broken_aside(broken: list[tuple[str, str]], checkpoint_dir: str | Path) -> Path | None:
    """Move each broken checkpoint into `<checkpoint_dir>.broken-<UTC time>/` with a REASON.txt (outside
    checkpoint_dir, where the Trainer's rotation never sees it); nothing is deleted."""
    if not broken:
        return None
    d = Path(checkpoint_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = d.with_name(f"{d.name}.broken-{stamp}")
    target.mkdir(parents=True, exist_ok=True)
    for ckpt, why in broken:
        dest = target / Path(ckpt).name
        os.replace(ckpt, dest)
        (dest / "REASON.txt").write_text(why + "\n", encoding="utf-8")
    return target


def describe_difference(saved: dict, now: dict) -> str:
    """'lora_r 8 -> 16, learning_rate ...' between two run records; else the resolved knobs or the data."""
    if not saved:
        return f"no {RUN_CONFIG_FILE} says what it was trained on"
    old, new = saved.get("config", {}), now.get("config", {})
    diffs = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items()
             if k not in OPERATIONAL_FIELDS and old.get(k) != v]
    old_knobs = saved.get("resolved", {})
    diffs += [f"{k} {old_knobs[k]!r} -> {v!r} (resolved on this machine)"
              for k, v in now.get("resolved", {}).items() if k in old_knobs and old_knobs[k] != v]
    if not diffs and saved.get("data_sha256") != now.get("data_sha256"):
        diffs.append("the training data changed")
    return ", ".join(diffs) or "another configuration or dataset"


# ------------------------------------------------------------------------------------------------ the decision
@dataclass
class ResumePlan:
    """What to do with checkpoint_dir: continue `checkpoint`, or start fresh after setting `stale` aside."""

    checkpoint: str | None = None   # resume from it
    stale: str | None = None        # the latest checkpoint, not continued: its folder goes aside before training
    why: str = ""                   # why it is not continued
    broken: list = field(default_factory=list)   # (folder, reason) of newer checkpoints that do not load


def plan_resume(cfg: FinetuneConfig, record: dict) -> ResumePlan:
    """Continue a checkpoint of the same run (resume="auto" or True), else start fresh. Touches nothing. A newer
    checkpoint that does not load (cut short while saving) is passed over for the newest one that does."""
    ckpt, broken = usable_checkpoint(cfg.checkpoint_dir)
    saved = read_run_record(cfg.checkpoint_dir)
    compatible = ckpt is not None and saved.get("fingerprint") == record["fingerprint"]
    if cfg.resume is True:
        if ckpt is None:
            raise FileNotFoundError(f"resume=True but {cfg.checkpoint_dir} holds no checkpoint; use resume='auto' "
                                    "or False")
        if not compatible:
            raise ValueError(f"resume=True but {ckpt} was trained on something else "
                             f"({describe_difference(saved, record)}); use resume=False to start over (its "
                             "checkpoints are then moved aside, not deleted)")
    if ckpt is None:
        return ResumePlan(broken=broken)
    if compatible and cfg.resume is not False:
        return ResumePlan(checkpoint=ckpt, broken=broken)
    why = "resume=False" if cfg.resume is False else f"it was trained on something else: " \
        f"{describe_difference(saved, record)}"
    return ResumePlan(stale=ckpt, why=why, broken=broken)


def set_aside(checkpoint_dir: str | Path) -> Path:
    """Move checkpoint_dir to `<name>.old-<UTC time>` next to it (a new name each time) and return that path."""
    d = Path(checkpoint_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target, n = d.with_name(f"{d.name}.old-{stamp}"), 1
    while target.exists():
        n += 1
        target = d.with_name(f"{d.name}.old-{stamp}-{n}")
    os.replace(d, target)
    return target


def start_run(cfg: FinetuneConfig, plan: ResumePlan, record: dict, is_main: bool = True,
              verbose: bool = True) -> Path | None:
    """Right before training (main process): set stale checkpoints aside, saying where and why, and record what
    this run trains on. Returns the folder they went to, if any."""
    if not is_main:
        return None
    aside = None
    broken_to = set_broken_aside(plan.broken, cfg.checkpoint_dir)
    for ckpt, why in plan.broken:
        print(f"{ckpt} does not load ({why}): moved to {broken_to}/{Path(ckpt).name} (with the reason in "
              "REASON.txt), never deleted")
    if plan.stale:
        aside = set_aside(cfg.checkpoint_dir)
        print(f"not resuming {plan.stale}: {plan.why}. Starting fresh; the earlier checkpoints were moved to "
              f"{aside} (nothing deleted: remove that folder when you no longer need it, or move it back to "
              f"{cfg.checkpoint_dir} and rerun with the earlier configuration to continue it)")
    elif plan.checkpoint and verbose:
        print(f"resuming from {plan.checkpoint}")
    write_json(Path(cfg.checkpoint_dir) / RUN_CONFIG_FILE, record)
    return aside
