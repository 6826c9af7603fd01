"""The model card (README.md): Hub YAML front matter (base_model, library_name, tags, license from the base,
datasets), how to run it, the training configuration, where the data came from, and 05's table with its
intervals, only when 05 scored this very adapter."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..io import read_json, read_jsonl, sha256_file, sha256_text
from .inputs import ExportInputs

# Licenses of bases whose card is not on this machine (the embedded model's folder is made from a GGUF).
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "meta-llama/Meta-Llama-3-8B": "llama3",
                  "meta-llama/Meta-Llama-3-8B-Instruct": "llama3", "meta-llama/Llama-3.1-8B": "llama3.1",
                  "meta-llama/Llama-3.2-1B": "llama3.2", "Qwen/Qwen2-7B": "apache-2.0",
                  "mistralai/Mistral-7B-v0.1": "apache-2.0"}
TRAIN_KEYS = ("template", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit",
              "learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_length", "packing", "seed")


def front_matter_of(readme: Path) -> dict:
    """The YAML front matter of a model card, {} when there is none or it does not parse."""
    import yaml

    if not readme.exists():
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", readme.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def hub_id_of(inputs: ExportInputs) -> str | None:
    """The base's Hub id: the name given when it looks like one, else the embedded model's, else None."""
    from ..models import EMBEDDED_MODELS

    if inputs.base_name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[inputs.base_name].hub_id
    if re.fullmatch(r"[\w.-]+/[\w.-]+", inputs.base_name) and not Path(inputs.base_name).exists():
        return inputs.base_name
    return None


def base_license(inputs: ExportInputs) -> tuple[str, str]:
    """(license, where it was found): the base's own card, else KNOWN_LICENSES, else 'other'."""
    lic = front_matter_of(inputs.base_path / "README.md").get("license")
    if lic:
        return str(lic), "the base model's card"
    hub = hub_id_of(inputs)
    if hub in KNOWN_LICENSES:
        return KNOWN_LICENSES[hub], "nbutils' table of known bases"
    return "other", "not found: the base model's license applies; check it before publishing"


def adapter_key(adapter_dir: Path) -> str:
    """The adapter hash 05 records in metrics.json (runtime.fingerprint.adapter)."""
    weights = sorted(adapter_dir.glob("adapter_model.*"))
    return sha256_text(*(sha256_file(w) for w in weights), sha256_file(adapter_dir / "adapter_config.json"))[:16]


def evaluation(reports_dir: Path, adapter_dir: Path) -> tuple[dict | None, str]:
    """(metrics.json, note): the report when it scored this adapter, else None and why not."""
    path = reports_dir / "metrics.json"
    if not path.exists():
        return None, f"not evaluated: {path} is missing (run notebooks/05_evaluate.ipynb)"
    report = read_json(path)
    recorded = ((report.get("runtime") or {}).get("fingerprint") or {}).get("adapter")
    if recorded and recorded != adapter_key(adapter_dir):
        return None, (f"{path} scored another adapter (fingerprint {recorded}, this one {adapter_key(adapter_dir)}): "
                      "rerun 05 before publishing its numbers")
    return report, f"from {path}"


def provenance(data_dir: Path, dataset_dir: Path) -> list[str]:
    """Lines saying where the training data came from: the split, the triples' generator, the papers."""
    lines = []
    info_path = dataset_dir / "split_info.json"
    if info_path.exists():
        info = read_json(info_path)
        lines.append(f"- Split: {info.get('n_train', '?')} train / {info.get('n_test', '?')} test rows, "
                     f"{info.get('method', '?')} (seed {info.get('seed', '?')}); train papers "
                     f"{info.get('train_papers', '?')}, test papers {info.get('test_papers', '?')}.")
        if info.get("source"):
            lines.append(f"- Made from `{Path(info['source']).name}`"
                         + (f" (sha256 {info['source_sha256'][:16]}…)" if info.get("source_sha256") else "") + ".")
    first = next(iter(read_jsonl(data_dir / "triples.jsonl")), None) if (data_dir / "triples.jsonl").exists() else None
    if first:
        lines.append(f"- Instruction/answer triples written by `{first.get('model', '?')}` from arXiv paper pages "
                     f"(prompt version {first.get('prompt_version', '?')}).")
    papers = data_dir / "papers.jsonl"
    if papers.exists():
        n = sum(1 for _ in read_jsonl(papers))
        lines.append(f"- {n} arXiv papers (ids, titles and PDF URLs in the project's papers.jsonl).")
    return lines or ["- Not recorded on this machine."]


def yaml_front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip() + "\n---\n"


def render_card(inputs: ExportInputs, *, model_name: str, repo_id: str | None, dataset_repo_id: str | None,
                license_: str | None, report: dict | None, eval_note: str, provenance_lines: list[str],
                gguf_files: dict[str, str], commands: list[str], merge_info: dict | None) -> str:
    """The whole README.md."""
    from ..evaluate.report import metrics_table

    lic, lic_src = (license_, "set by the exporter") if license_ else base_license(inputs)
    hub = hub_id_of(inputs)
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "transformers"
    meta["license"] = lic
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["lora", "peft", "fine-tuned", "arxiv", "instruction-tuning", "nbutils"] \
        + (["gguf", "ollama"] if gguf_files else [])
    if dataset_repo_id:
        meta["datasets"] = [dataset_repo_id]
    cfg = (inputs.train_log.get("config") or {}) if isinstance(inputs.train_log.get("config"), dict) else {}
    train_rows = [f"| `{k}` | `{json.dumps(cfg[k])}` |" for k in TRAIN_KEYS if k in cfg]
    summary = inputs.train_log.get("summary") or {}
    use = repo_id or model_name
    parts = [
        yaml_front_matter(meta),
        f"# {model_name}",
        f"A LoRA fine-tune of `{inputs.base_name}` on instruction/answer pairs generated from arXiv papers, merged "
        f"into the base weights ({(merge_info or {}).get('dtype', 'bf16')}). Prompt format: `{inputs.template}` "
        "(stored as the tokenizer's chat template, in the GGUF files and in the Ollama Modelfile)."
        + (f" License: `{lic}` ({lic_src})." if lic else ""),
        *[f"> {n}" for n in inputs.notes],
        "## Use it",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained(\"{use}\")\nmodel = AutoModelForCausalLM.from_pretrained(\"{use}\")\n"
        "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"What does the paper propose?\"}],\n"
        "                              add_generation_prompt=True, return_tensors=\"pt\")\n"
        "print(tok.decode(model.generate(ids, max_new_tokens=256)[0][ids.shape[1]:], skip_special_tokens=True))\n```",
        *([f"Files: {', '.join(f'`{Path(p).name}` ({t})' for t, p in gguf_files.items())}."] if gguf_files else []),
        *(["```sh\n" + "\n".join(commands) + "\n```"] if commands else []),
        "## Evaluation (stage 05: base vs tuned on the held-out split)",
    ]
    if report:
        level = int(round(report.get("bootstrap", {}).get("confidence", 0.95) * 100))
        parts += [f"{report.get('n_examples', '?')} held-out examples, template `{report.get('template')}`, "
                  f"{'sampled' if (report.get('generation') or {}).get('do_sample') else 'greedy'} decoding; paired "
                  f"bootstrap ({(report.get('bootstrap') or {}).get('n', '?')} resamples) {level}% intervals of the "
                  f"difference ({eval_note}).", metrics_table(report["metrics"])]
        if report.get("n_examples", 0) < 30:
            parts.append("*Fewer than 30 examples: read the intervals as indicative.*")
    else:
        parts.append(f"*{eval_note}.*")
    parts += ["## Training", "Stage 04 of the nbutils pipeline (TRL SFTTrainer, loss on the answer tokens only).",
              "| parameter | value |\n|---|---|\n" + "\n".join(train_rows) if train_rows else "*Not recorded.*"]
    if summary:
        parts.append(f"Train loss {summary.get('first_loss')} -> {summary.get('last_loss')}; eval loss "
                     f"{summary.get('eval_loss_start')} -> {summary.get('eval_loss_end')}; "
                     f"{inputs.train_log.get('global_step', '?')} steps.")
    parts += ["## Data provenance", *provenance_lines,
              "The answers were written by a language model from the papers' text; they can be wrong. The papers' "
              "own licenses apply to their content."]
    return "\n\n".join(parts) + "\n"
