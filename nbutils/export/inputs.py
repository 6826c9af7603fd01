"""What the export starts from, checked before anything is written: the adapter (and the base it records), the base
model's folder and architecture, the training template, 05's metrics, and room on disk and in memory.

Every refusal is an `ExportError` subclass whose message names the item, the reason and what to do."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import read_json, sha256_file, sha256_text
from ..templates import ALPACA, TEMPLATES
from .config import ExportConfig

TRAIN_LOG = "train_log.json"   # 04 writes it into the adapter folder
GB = 1e9


class ExportError(RuntimeError):
    """An export that cannot start or go on; the message says why and what to do."""


class NoAdapter(ExportError, FileNotFoundError):
    pass


class AdapterOfAnotherBase(ExportError, ValueError):
    pass


class MissingBase(ExportError, FileNotFoundError):
    pass


class UnsupportedArchitecture(ExportError, ValueError):
    pass


class NotEnoughSpace(ExportError, OSError):
    pass


@dataclass
class ExportInputs:
    """The resolved inputs of one export."""

    adapter_dir: Path
    base_name: str                   # as the user or the adapter names it (the card's base_model)
    base_path: Path                  # a local folder holding config.json and the weights
    base_config: dict
    template: str
    train_log: dict
    adapter_config: dict
    n_params: int
    base_4bit_checkpoint: bool       # the base folder itself is a bitsandbytes 4-bit checkpoint
    trained_4bit: bool               # 04 quantised the base to nf4 on the fly (QLoRA)
    notes: list[str] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return (self.base_config.get("architectures") or ["?"])[0]

    def fingerprint(self) -> str:
        """Names these inputs: the adapter's files, the base's config and weight files (name and size: hashing
        16 GB of base weights on every run would cost minutes), the template."""
        adapter = [sha256_file(p) for p in sorted(self.adapter_dir.glob("adapter_model.*"))]
        adapter.append(sha256_file(self.adapter_dir / "adapter_config.json"))
        base = [sha256_file(self.base_path / "config.json")]
        base += [f"{p.name}:{p.stat().st_size}" for p in sorted(self.base_path.glob("*.safetensors"))]
        return sha256_text(*adapter, *base, self.template)[:20]


# ------------------------------------------------------------------------------------------------ the adapter
def read_train_log(adapter_dir: Path) -> dict:
    p = adapter_dir / TRAIN_LOG
    try:
        log = read_json(p) if p.exists() else {}
    except (OSError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}


def check_adapter(adapter_dir: str | Path) -> Path:
    p = Path(adapter_dir)
    if not (p / "adapter_config.json").exists():
        raise NoAdapter(f"no PEFT adapter in {p} (adapter_config.json missing): run notebooks/04_finetune.ipynb "
                        "first, or pass adapter_dir= (the folder 04 wrote)")
    if not list(p.glob("adapter_model.*")):
        raise NoAdapter(f"{p} has adapter_config.json but no adapter_model.safetensors: the adapter was not saved "
                        "completely; rerun 04")
    return p


def recorded_bases(adapter_dir: Path, log: dict) -> dict[str, str]:
    """Where the adapter says which base it was trained on -> that name."""
    found: dict[str, str] = {}
    conf = read_json(adapter_dir / "adapter_config.json")
    if isinstance(conf.get("base_model_name_or_path"), str) and conf["base_model_name_or_path"].strip():
        found["adapter_config.json base_model_name_or_path"] = conf["base_model_name_or_path"]
    for key in ("base_model", "base_model_path"):
        if isinstance(log.get(key), str) and log[key].strip():
            found[f"{TRAIN_LOG} {key}"] = log[key]
    return found


def same_model(a: str, b: str) -> bool:
    """Two names of one model: equal, one existing folder, or the same last path component (a hub id and its local
    copy, a data_dir that moved); the embedded model's hub id and folder name are one model."""
    from ..models import EMBEDDED_MODELS

    def names(x: str) -> set[str]:
        out = {x.rstrip("/")}
        if x in EMBEDDED_MODELS:
            out |= {EMBEDDED_MODELS[x].hub_id, EMBEDDED_MODELS[x].folder}
        return out

    for x in names(a):
        for y in names(b):
            px, py = Path(x).expanduser(), Path(y).expanduser()
            if x == y or (px.exists() and py.exists() and px.resolve() == py.resolve()):
                return True
            if px.name and px.name.lower() == py.name.lower():
                return True
    return False


def choose_base(cfg: ExportConfig, recorded: dict[str, str]) -> str:
    """cfg.base_model when given (refused when the adapter records another base), else the recorded one."""
    if cfg.base_model:
        if recorded and not any(same_model(cfg.base_model, r) for r in recorded.values()):
            said = "; ".join(f"{name!r} ({where})" for where, name in recorded.items())
            raise AdapterOfAnotherBase(
                f"the adapter in {cfg.adapter_dir} was trained on {said}, but base_model={cfg.base_model!r}. Export "
                f"it with base_model={next(iter(recorded.values()))!r} (or None: the recorded one), or retrain 04 on "
                f"{cfg.base_model!r}.")
        return cfg.base_model
    if not recorded:
        raise AdapterOfAnotherBase(f"the adapter in {cfg.adapter_dir} records no base model: pass base_model=")
    log_name = recorded.get(f"{TRAIN_LOG} base_model")
    return log_name or next(iter(recorded.values()))


# ------------------------------------------------------------------------------------------------ the base
def locate_base(name: str, data_dir: str) -> Path:
    """A local folder with config.json and safetensors weights for `name` (the embedded model is converted once; a
    hub id comes from the local cache, or is downloaded where the hub is reachable, HF_TOKEN from the environment)."""
    from ..models import ModelNotAvailable, hub_token, resolve_model_path

    try:
        resolved = resolve_model_path(name, data_dir)
    except ModelNotAvailable as e:
        raise MissingBase(f"base model {name!r}: {e}") from None
    path = Path(resolved)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(resolved, token=hub_token(), allow_patterns=[
                "*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "README.md"]))
        except Exception as e:  # offline, gated, unknown id: one clear message
            raise MissingBase(
                f"base model {name!r} is neither a local folder nor reachable on the Hub here "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Pass base_model= a local folder holding "
                "config.json and *.safetensors, or set HF_TOKEN and check the network.") from None
    if not (path / "config.json").exists():
        raise MissingBase(f"base model {name!r}: {path} holds no config.json")
    if not list(path.glob("*.safetensors")):
        raise MissingBase(f"base model {name!r}: {path} holds no *.safetensors weights (only safetensors are read)")
    return path


def safetensors_params(folder: Path) -> int:
    """Parameter count from the safetensors headers (no weights read); a 4-bit checkpoint counts packed bytes x2."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            total += count * (2 if info["dtype"] == "U8" else 1)
    return total


def resolve_template(cfg: ExportConfig, log: dict) -> str:
    recorded = (log.get("config") or {}).get("template") if isinstance(log.get("config"), dict) else None
    template = cfg.template or recorded or ALPACA
    if template not in TEMPLATES:
        raise ExportError(f"template {template!r}: expected one of {', '.join(TEMPLATES)}")
    return template


def gather_inputs(cfg: ExportConfig) -> ExportInputs:
    """Check and resolve everything the export reads; raises an ExportError naming what is wrong."""
    adapter_dir = check_adapter(cfg.adapter_dir)
    log = read_train_log(adapter_dir)
    name = choose_base(cfg, recorded_bases(adapter_dir, log))
    base_path = locate_base(name, cfg.data_dir)
    base_config = read_json(base_path / "config.json")
    quant = base_config.get("quantization_config") or {}
    base_4bit = bool(quant.get("load_in_4bit") or quant.get("_load_in_4bit")) or quant.get("quant_method") == "bnb4"
    trained_4bit = bool((log.get("runtime") or {}).get("load_in_4bit")
                        if isinstance(log.get("runtime"), dict) else False)
    inputs = ExportInputs(adapter_dir=adapter_dir, base_name=name, base_path=base_path, base_config=base_config,
                          template=resolve_template(cfg, log), train_log=log,
                          adapter_config=read_json(adapter_dir / "adapter_config.json"),
                          n_params=safetensors_params(base_path), base_4bit_checkpoint=base_4bit,
                          trained_4bit=trained_4bit)
    if base_4bit:
        inputs.notes.append(f"the base checkpoint {name} is stored in 4-bit: it is dequantised to {cfg.dtype} and "
                            "the adapter merged into that copy; nothing is requantised")
    elif trained_4bit:
        inputs.notes.append(f"04 trained on the base quantised to nf4 on the fly (QLoRA); the adapter is merged into "
                            f"the base's own weights in {cfg.dtype} (what 05 scores on a GPU with >= 40 GiB)")
    return inputs


# ------------------------------------------------------------------------------------------------ room
BYTES_PER_PARAM = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def planned_bytes(n_params: int, merge: bool, gguf_types: list[str]) -> dict[str, float]:
    """Bytes each output will take on disk."""
    out = {"merged": 2.0 * n_params} if merge else {}
    for t in gguf_types:
        out[f"gguf {t}"] = BYTES_PER_PARAM[t] * n_params
    return out


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); psutil's figure elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def check_room(out_dir: Path, needs: dict[str, float], memory_needed: float, disk_free: int | None = None,
               memory_free: int | None = None) -> dict[str, Any]:
    """Refuse with the numbers when the outputs do not fit on the disk (10 % margin) or the merge's working set
    does not fit in memory; returns the figures for the result."""
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free if disk_free is None else disk_free
    total = sum(needs.values()) * 1.1
    if total > free:
        parts = ", ".join(f"{k} {v / GB:.1f} GB" for k, v in needs.items())
        raise NotEnoughSpace(
            f"not enough disk space in {probe}: the export needs {total / GB:.1f} GB ({parts}, +10 %), "
            f"{free / GB:.1f} GB are free. Free some space, point export_dir= at a larger disk, or write fewer "
            "files (gguf_types=[...], merge stays needed for GGUF).")
    mem = available_memory() if memory_free is None else memory_free
    if memory_needed > mem:
        raise NotEnoughSpace(
            f"not enough memory: merging needs about {memory_needed / GB:.1f} GB, {mem / GB:.1f} GB are available. "
            "Close other programs or run the export on a larger machine.")
    return {"disk_free_gb": round(free / GB, 2), "disk_needed_gb": round(total / GB, 2),
            "memory_available_gb": round(mem / GB, 2), "memory_needed_gb": round(memory_needed / GB, 2)}


def environment_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
