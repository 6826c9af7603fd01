"""The model 05 scores: the base loaded once (bf16, or 4-bit on a small GPU), the LoRA adapter attached, not
merged; and the fingerprint that names these weights in the prediction cache."""
from __future__ import annotations

from pathlib import Path

from nbutils.io import sha256_file, sha256_text

from .config import EvalConfig


def check_adapter(adapter_dir: str | Path) -> Path:
    p = Path(adapter_dir)
    if not (p / "adapter_config.json").exists():
        raise FileNotFoundError(f"no PEFT adapter in {p} (adapter_config.json missing): run "
                                f"notebooks/04_finetune.ipynb first, or pass adapter_dir=")
    return p


def choose_4bit(cfg: EvalConfig, device: str) -> bool:
    """bf16 (adapter attached, no dequantisation in every matmul) unless the GPU is small."""
    if cfg.load_in_4bit is not None:
        return bool(cfg.load_in_4bit) and device == "cuda"
    if device != "cuda":
        return False
    import torch

    return torch.cuda.get_device_properties(0).total_memory < 40 * 2**30


def load_tokenizer_for_eval(cfg: EvalConfig):
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


def load_model_with_adapter(cfg: EvalConfig, verbose: bool = True):
    """(PeftModel in eval mode, tokenizer): the base loaded once, the adapter attached (not merged)."""
    from peft import PeftModel

    from nbutils.models import describe_runtime, load_causal_lm, pick_device

    adapter = check_adapter(cfg.adapter_dir)
    device = pick_device()
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    four_bit = choose_4bit(cfg, device)
    if verbose:
        print(describe_runtime(device) + (", base in 4-bit" if four_bit else ""))
    tok = load_tokenizer_for_eval(cfg)
    base = load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=four_bit)
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    return model, tok


def model_fingerprint(cfg: EvalConfig) -> dict:
    """What identifies the weights (for the prediction cache): base name + config hash, adapter weights hash."""
    from nbutils.models import resolve_model_path

    path = resolve_model_path(cfg.base_model, cfg.data_dir)
    cfg_file = Path(path) / "config.json"
    base_id = sha256_text(path, sha256_file(cfg_file) if cfg_file.exists() else "")
    adapter = Path(cfg.adapter_dir)
    weights = sorted(adapter.glob("adapter_model.*"))
    adapter_id = sha256_text(*(sha256_file(w) for w in weights), sha256_file(adapter / "adapter_config.json"))
    return {"base": base_id[:16], "adapter": adapter_id[:16]}

