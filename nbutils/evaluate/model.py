"""The model 05 scores: the base loaded once (bf16, or 4-bit on a small GPU), the LoRA adapter attached, not
merged; and the fingerprint that names these weights in the prediction cache."""
from __future__ import annotations

from pathlib import Path

from nbutils.io import read_json, sha256_file, sha256_text

from ..finetune.config import EVAL_BF16_MIN_GPU_GIB
from .config import EvaluateConfig
from .data import TRAIN_LOG, read_train_log


class AdapterBaseMismatch(ValueError):
    """The adapter was trained on another base model than `base_model` names."""


def check_adapter(adapter_dir: str | Path) -> Path:
    p = Path(adapter_dir)
    if not (p / "adapter_config.json").exists():
        raise FileNotFoundError(f"no PEFT adapter in {p} (adapter_config.json missing): run "
                                f"notebooks/04_finetune.ipynb first, or pass adapter_dir=")
    return p


def trained_on(adapter_dir: str | Path) -> dict[str, str]:
    """Where the adapter says which base it was trained on -> that name: adapter_config.json's
    base_model_name_or_path and 04's train_log.json base_model / base_model_path."""
    found = {}
    conf = read_json(Path(adapter_dir) / "adapter_config.json")
    if isinstance(conf, dict) and isinstance(conf.get("base_model_name_or_path"), str):
        found["adapter_config.json base_model_name_or_path"] = conf["base_model_name_or_path"]
    log = read_train_log(adapter_dir)
    for key in ("base_model", "base_model_path"):
        if isinstance(log.get(key), str):
            found[f"{TRAIN_LOG} {key}"] = log[key]
    return {where: name for where, name in found.items() if name.strip()}


def names_of(base_model: str) -> set[str]:
    """`base_model` and the other names of the same model (the embedded model's hub id and folder)."""
    from nbutils.models import EMBEDDED_MODELS

    names = {base_model}
    if base_model in EMBEDDED_MODELS:
        names |= {EMBEDDED_MODELS[base_model].hub_id, EMBEDDED_MODELS[base_model].folder}
    return names


def same_model(a: str, b: str) -> bool:
    """Two names of one model: equal, one existing folder, or the same last path component (a hub id and its
    local copy, a data_dir that moved)."""
    pa, pb = Path(a.rstrip("/")).expanduser(), Path(b.rstrip("/")).expanduser()
    if a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve()):
        return True
    return bool(pa.name) and pa.name.lower() == pb.name.lower()


def describe_trained_on(recorded: dict[str, str]) -> str:
    """'/a/base' (adapter_config.json base_model_name_or_path, train_log.json base_model): each name once."""
    by_name: dict[str, list[str]] = {}
    for where, name in recorded.items():
        by_name.setdefault(name, []).append(where)
    return "; ".join(f"{name!r} ({', '.join(wheres)})" for name, wheres in by_name.items())


def check_adapter_base(cfg: EvaluateConfig) -> None:
    """Refuse an adapter trained on another base than cfg.base_model, naming both (before anything loads)."""
    recorded = trained_on(cfg.adapter_dir)
    if not recorded or any(same_model(n, r) for n in names_of(cfg.base_model) for r in recorded.values()):
        return
    trained = next(iter(recorded.values()))
    raise AdapterBaseMismatch(
        f"the adapter in {cfg.adapter_dir} was trained on {describe_trained_on(recorded)}, "
        f"but base_model={cfg.base_model!r}. Evaluate it with base_model={trained!r}, or retrain "
        f"notebooks/04_finetune.ipynb on {cfg.base_model!r}.")


def attach_adapter(base, cfg: EvaluateConfig):
    """The PeftModel of `base` with the adapter attached; an adapter whose weights do not fit the base's shapes
    is refused naming both models (instead of PEFT's raw "size mismatch" list)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(cfg.adapter_dir))
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "")
        trained = describe_trained_on(trained_on(cfg.adapter_dir)) or "an unrecorded base"
        raise AdapterBaseMismatch(
            f"the adapter in {cfg.adapter_dir} does not fit base_model={cfg.base_model!r}: its weights have other "
            f"shapes ({first.rstrip('.')}). It was trained on {trained}. Evaluate it with that base_model, or "
            f"retrain notebooks/04_finetune.ipynb on {cfg.base_model!r}.") from None


def choose_4bit(cfg: EvaluateConfig, device: str) -> bool:
    """bf16 (adapter attached, no dequantisation in every matmul) unless the GPU is small."""
    if cfg.load_in_4bit is not None:
        return bool(cfg.load_in_4bit) and device == "cuda"
    if device != "cuda":
        return False
    import torch

    return torch.cuda.get_device_properties(0).total_memory < EVAL_BF16_MIN_GPU_GIB * 2**30


def load_tokenizer_for_eval(cfg: EvaluateConfig):
    """The adapter's tokenizer when 04 saved one (same special tokens as training), else the base's;
    left padding, pad = eos when the tokenizer has none."""
    from transformers import AutoTokenizer

    from nbutils.models import load_tokenizer

    if (Path(cfg.adapter_dir) / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(cfg.adapter_dir)
    else:
        tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_with_adapter(cfg: EvaluateConfig, verbose: bool = True):
    """(PeftModel in eval mode, tokenizer): the base loaded once, the adapter attached (not merged). The
    adapter must have been trained on cfg.base_model (checked by name first, then by shape)."""
    from nbutils.models import describe_runtime, load_causal_lm, pick_device

    check_adapter(cfg.adapter_dir)
    check_adapter_base(cfg)
    device = pick_device()
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    four_bit = choose_4bit(cfg, device)
    if verbose:
        print(describe_runtime(device) + (", base in 4-bit" if four_bit else ""))
    base = load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=four_bit)
    model = attach_adapter(base, cfg)
    model.eval()
    return model, load_tokenizer_for_eval(cfg)


def model_fingerprint(cfg: EvaluateConfig) -> dict:
    """What identifies the weights (for the prediction cache): base name + config hash + its weight files' names,
    sizes and mtimes (or hub revision), adapter weights hash."""
    from nbutils.models import resolve_model_path, weights_id

    path = resolve_model_path(cfg.base_model, cfg.data_dir)
    cfg_file = Path(path) / "config.json"
    base_id = sha256_text(path, sha256_file(cfg_file) if cfg_file.exists() else "",
                          weights_id(cfg.base_model, cfg.data_dir))
    adapter = Path(cfg.adapter_dir)
    weights = sorted(adapter.glob("adapter_model.*"))
    adapter_id = sha256_text(*(sha256_file(w) for w in weights), sha256_file(adapter / "adapter_config.json"))
    return {"base": base_id[:16], "adapter": adapter_id[:16]}

