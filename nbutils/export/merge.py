"""Adapter + base -> merged/: safetensors weights in bf16/fp16, the tokenizer with the training chat template, the
config and a generation config whose EOS ids include the template's end-of-turn token.

Two ways, same result:
- streaming (plain LoRA on linear weights, a 16/32-bit base): one base shard at a time is read, each adapted weight
  becomes W + (alpha/r) B A computed in float32 (on the GPU when there is one), cast to the dtype and written; the
  model is never built, so memory stays at one shard whatever the model's size;
- through PEFT (`merge_and_unload`): for a 4-bit base checkpoint (dequantised to the dtype first: the merged copy is
  never requantised) and adapters the streaming path does not cover (DoRA, rank patterns, modules_to_save...)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..io import atomic_folder, read_json, write_json
from ..templates import ALPACA
from .chat import ALPACA_JINJA
from .inputs import AdapterOfAnotherBase, ExportInputs

COMPLETE = ".export-key"         # written last inside merged/: its content names the inputs it was made from
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def streaming_applies(inputs: ExportInputs) -> tuple[bool, str]:
    """(True, '') when the streaming merge covers this adapter and base, else (False, why)."""
    ac = inputs.adapter_config
    if inputs.base_4bit_checkpoint:
        return False, "the base checkpoint is 4-bit (dequantised through transformers)"
    if ac.get("peft_type", "LORA") != "LORA":
        return False, f"peft_type {ac.get('peft_type')}"
    for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layer_replication",
                "target_parameters", "lora_bias", "fan_in_fan_out"):
        if ac.get(key):
            return False, f"adapter_config.json sets {key}"
    return True, ""


def lora_scale(adapter_config: dict) -> float:
    r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    return alpha / (r ** 0.5) if adapter_config.get("use_rslora") else alpha / r


def load_lora_pairs(adapter_dir: Path) -> dict[str, tuple]:
    """{base weight name: (A, B)} from adapter_model.safetensors."""
    from safetensors.torch import load_file

    files = sorted(adapter_dir.glob("adapter_model.safetensors"))
    if not files:
        raise AdapterOfAnotherBase(f"{adapter_dir}: only adapter_model.safetensors adapters are merged here")
    parts: dict[str, dict] = {}
    for name, t in load_file(str(files[0])).items():
        m = LORA_KEY.match(name)
        if not m:
            raise AdapterOfAnotherBase(f"{adapter_dir}: adapter tensor {name!r} is not a LoRA A/B weight; "
                                       "this adapter type is merged through PEFT only")
        parts.setdefault(m.group("module") + ".weight", {})[m.group("ab")] = t
    return {k: (v["A"], v["B"]) for k, v in parts.items() if "A" in v and "B" in v}


def merge_weight(w, a, b, scale: float, dtype, device: str):
    """W + scale * B @ A in float32, cast to `dtype` (on `device`, back on the CPU)."""
    import torch

    wd = w.to(device=device, dtype=torch.float32)
    wd += scale * (b.to(device=device, dtype=torch.float32) @ a.to(device=device, dtype=torch.float32))
    return wd.to(dtype).cpu()


def stream_merge(inputs: ExportInputs, out: Path, dtype_name: str) -> dict:
    """Write merged shards into `out` mirroring the base's sharding; returns the weight map and counts."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = load_lora_pairs(inputs.adapter_dir)
    scale = lora_scale(inputs.adapter_config)
    shards = sorted(inputs.base_path.glob("*.safetensors"))
    weight_map: dict[str, str] = {}
    merged = 0
    for shard in shards:
        name = shard.name if len(shards) > 1 else "model.safetensors"
        tensors = {}
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                w = f.get_tensor(key)
                if key in pairs:
                    a, b = pairs.pop(key)
                    if (b.shape[0], a.shape[1]) != tuple(w.shape):
                        raise AdapterOfAnotherBase(
                            f"the adapter in {inputs.adapter_dir} does not fit base {inputs.base_name!r}: {key} is "
                            f"{tuple(w.shape)} in the base, the adapter's update is {(b.shape[0], a.shape[1])}")
                    w = merge_weight(w, a, b, scale, dtype, device)
                    merged += 1
                elif w.is_floating_point():
                    w = w.to(dtype)
                tensors[key] = w.contiguous()
                weight_map[key] = name
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
    if pairs:
        raise AdapterOfAnotherBase(
            f"the adapter in {inputs.adapter_dir} does not fit base {inputs.base_name!r}: {len(pairs)} adapted "
            f"weight(s) have no base weight, e.g. {next(iter(pairs))!r}")
    if len(shards) > 1:
        total = sum((out / n).stat().st_size for n in set(weight_map.values()))
        write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return {"method": "streaming", "merged_weights": merged, "device": device}


def peft_merge(inputs: ExportInputs, out: Path, dtype_name: str) -> dict:
    """Load the base (a 4-bit checkpoint dequantised to `dtype_name`), attach the adapter, merge_and_unload, save."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(str(inputs.base_path), dtype=dtype)
    how = "peft"
    if inputs.base_4bit_checkpoint:
        model = model.dequantize()
        model = model.to(dtype)
        how = f"peft, 4-bit base dequantised to {dtype_name}"
    try:
        merged = PeftModel.from_pretrained(model, str(inputs.adapter_dir)).merge_and_unload()
    except RuntimeError as e:
        if "size mismatch" in str(e):
            raise AdapterOfAnotherBase(f"the adapter in {inputs.adapter_dir} does not fit base "
                                       f"{inputs.base_name!r}: {str(e).splitlines()[-1].strip()}") from None
        raise
    merged.to(dtype).save_pretrained(str(out), safe_serialization=True)
    return {"method": how, "device": "cpu"}


def load_export_tokenizer(inputs: ExportInputs):
    """The adapter's tokenizer when 04 saved one (its pad token), else the base's; Alpaca gets ALPACA_JINJA."""
    from transformers import AutoTokenizer

    src = inputs.adapter_dir if (inputs.adapter_dir / "tokenizer_config.json").exists() else inputs.base_path
    tok = AutoTokenizer.from_pretrained(str(src))
    if inputs.template == ALPACA:
        tok.chat_template = ALPACA_JINJA
    return tok


def end_token_ids(tok) -> list[int]:
    """EOS ids for generation_config.json: the tokenizer's EOS and the chat template's end-of-turn tokens."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    template = getattr(tok, "chat_template", "") or ""
    vocab = tok.get_vocab()
    for t in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        if t in template and t in vocab:
            ids.append(vocab[t])
    return list(dict.fromkeys(ids))


def write_configs(inputs: ExportInputs, out: Path, tok, dtype_name: str) -> None:
    """config.json (the dtype, no quantization_config) and generation_config.json (greedy-safe EOS list, pad)."""
    if (out / "config.json").exists():
        conf = read_json(out / "config.json")
    else:
        conf = dict(inputs.base_config)
    conf.pop("quantization_config", None)
    conf["dtype"] = dtype_name
    conf.pop("torch_dtype", None)
    write_json(out / "config.json", conf)
    gen_path = inputs.base_path / "generation_config.json"
    gen = read_json(gen_path) if gen_path.exists() else {}
    gen.pop("transformers_version", None)
    eos = end_token_ids(tok)
    gen["eos_token_id"] = eos if len(eos) > 1 else (eos[0] if eos else gen.get("eos_token_id"))
    if tok.pad_token_id is not None:
        gen["pad_token_id"] = tok.pad_token_id
    if tok.bos_token_id is not None:
        gen.setdefault("bos_token_id", tok.bos_token_id)
    write_json(out / "generation_config.json", gen)


def merged_is_current(out: Path, key: str) -> bool:
    p = out / COMPLETE
    return p.exists() and p.read_text().strip() == key


def write_merged(inputs: ExportInputs, out_dir: str | Path, dtype_name: str, key: str) -> dict:
    """merged/ in one go (atomic_folder: a killed run leaves only merged.partial, never taken as done)."""
    out = Path(out_dir)
    stream, why = streaming_applies(inputs)
    with atomic_folder(out) as tmp:
        info = stream_merge(inputs, tmp, dtype_name) if stream else peft_merge(inputs, tmp, dtype_name)
        if not stream:
            info["why_not_streaming"] = why
        tok = load_export_tokenizer(inputs)
        tok.save_pretrained(str(tmp))
        write_configs(inputs, tmp, tok, dtype_name)
        (tmp / "export_merge.json").write_text(json.dumps({**info, "dtype": dtype_name, "template": inputs.template,
                                                           "base": inputs.base_name}, indent=2) + "\n")
        (tmp / COMPLETE).write_text(key + "\n")
    return info
