"""Tiny random models with the embedded SmolLM2's real tokenizer (byte-level BPE, ChatML template), LoRA adapters on
them as 04 saves them (adapter + tokenizer + train_log.json), and a data_dir to export from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_tiny(out: Path, tokenizer_src: Path, arch: str = "llama", tie: bool = False, seed: int = 0) -> Path:
    """A 2-layer random model of `arch` (llama | qwen2) with the SmolLM2 tokenizer, saved as a HF folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    kw = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie, bos_token_id=1,
              eos_token_id=2, pad_token_id=2)
    cfg = LlamaConfig(**kw) if arch == "llama" else Qwen2Config(**kw)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():   # weights large enough that a wrong permutation or a lost LoRA changes the answers
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in TOKENIZER_FILES:
        if (tokenizer_src / f).exists():
            shutil.copy(tokenizer_src / f, out / f)
    return out


def make_adapter(base_dir: Path, out: Path, template: str = "alpaca", base_name: str | None = None, r: int = 4,
                 seed: int = 1) -> Path:
    """A LoRA adapter on `base_dir` with random (non-zero) B, saved with the tokenizer and a train_log.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out))
    log = {"base_model": base_name or str(base_dir), "base_model_path": str(base_dir),
           "config": {"template": template, "lora_r": r, "lora_alpha": 2 * r, "learning_rate": 1e-3, "max_steps": 4},
           "runtime": {"load_in_4bit": False}, "global_step": 4,
           "summary": {"first_loss": 3.2, "last_loss": 2.1, "eval_loss_start": 3.0, "eval_loss_end": 2.5}}
    (out / "train_log.json").write_text(json.dumps(log))
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, embedded_model_path) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", embedded_model_path)


@pytest.fixture
def data_dir(tmp_path, tiny_base) -> Path:
    """A data_dir whose models/adapter holds an Alpaca-trained adapter on the tiny base."""
    make_adapter(tiny_base, tmp_path / "models" / "adapter")
    return tmp_path


def export_config(data_dir: Path, **kw):
    from nbutils.export import ExportConfig

    return ExportConfig.from_params(profile="demo", data_dir=str(data_dir), base_model=kw.pop("base_model", None),
                                    **kw)
