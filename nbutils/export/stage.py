"""The export step: `run(cfg) -> ExportResult`.

    inputs checked (adapter, its base, template, architecture, room) -> merged/ -> one GGUF per type -> Modelfile
    -> README.md (model card with 05's table) -> optionally the Hub; export.json records what was made from what.

Every artefact is published atomically (a folder via atomic_folder, a file via a .partial renamed) and named by a key
of its inputs (adapter and base files, template, dtype, GGUF type): a rerun skips what is complete and unchanged,
and a killed run leaves nothing a rerun takes as done."""
from __future__ import annotations

import re
import time
from pathlib import Path

from ..io import read_json, sha256_text, write_json
from ..lock import locked_stage
from .card import evaluation, provenance, render_card
from .config import ExportConfig
from .inputs import (
    ExportInputs,
    UnsupportedArchitecture,
    check_room,
    gather_inputs,
    planned_bytes,
)
from .result import ExportResult

FORMAT_VERSION = "1"          # bump when the files this step writes change for the same inputs
MANIFEST = "export.json"
EXAMPLE_PROMPT = "What problem does the paper address, and how?"


def model_name_for(cfg: ExportConfig, inputs: ExportInputs) -> str:
    name = cfg.model_name or f"{Path(inputs.base_name.rstrip('/')).name}-arxiv-lora"
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


def read_manifest(export_dir: Path) -> dict:
    p = export_dir / MANIFEST
    try:
        data = read_json(p) if p.exists() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def memory_for_merge(inputs: ExportInputs, streaming: bool) -> float:
    """Bytes the merge holds at once: streaming, the largest base shard read and its converted copy; through PEFT,
    the whole model in bf16 (+20 %)."""
    if streaming:
        largest = max((p.stat().st_size for p in inputs.base_path.glob("*.safetensors")), default=0)
        return 2.0 * largest
    return 2.4 * inputs.n_params


def check_gguf_possible(inputs: ExportInputs, cfg: ExportConfig) -> None:
    """Refuse an architecture GGUF cannot take before the (long) merge, naming it."""
    from .gguf import converter_command, gguf_arch

    if cfg.gguf_types:
        try:
            gguf_arch(inputs.base_config, Path(cfg.export_dir) / "merged")
        except UnsupportedArchitecture as e:
            raise UnsupportedArchitecture(f"{e} (or set gguf_types=[] to export merged safetensors only; then: "
                                          f"{converter_command(Path(cfg.export_dir) / 'merged', 'model.gguf')})") \
                from None


def artifact(name: str, path: Path, status: str, seconds: float | None = None, **extra) -> dict:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
        (path.stat().st_size if path.exists() else 0)
    return {"name": name, "path": str(path), "status": status, "bytes": size,
            "seconds": None if seconds is None else round(seconds, 1), **extra}


@locked_stage("export")
def run(cfg: ExportConfig, verbose: bool = True) -> ExportResult:
    """Merge, convert, describe and optionally publish the adapter 04 trained (and 05 evaluated)."""
    from .merge import merged_is_current, streaming_applies, write_merged

    t0 = time.time()
    say = print if verbose else (lambda *a, **k: None)
    inputs = gather_inputs(cfg)
    check_gguf_possible(inputs, cfg)
    export_dir = Path(cfg.export_dir)
    name = model_name_for(cfg, inputs)
    merged_dir = export_dir / "merged"
    need_merged = cfg.merge or bool(cfg.gguf_types)
    merged_key = sha256_text(FORMAT_VERSION, inputs.fingerprint(), cfg.dtype)[:20]
    manifest = read_manifest(export_dir)
    keys = manifest.get("keys", {}) if manifest.get("merged_key") == merged_key else {}
    gguf_paths = {t: export_dir / f"{name}-{t}.gguf" for t in cfg.gguf_types}
    gguf_keys = {t: sha256_text(merged_key, t)[:20] for t in cfg.gguf_types}
    todo_merged = need_merged and not merged_is_current(merged_dir, merged_key)
    todo_gguf = [t for t in cfg.gguf_types if not (gguf_paths[t].exists() and keys.get(t) == gguf_keys[t])]
    streaming, _ = streaming_applies(inputs)
    result = ExportResult(export_dir=str(export_dir), base_model=inputs.base_name, template=inputs.template,
                          notes=list(inputs.notes))
    if cfg.check_space and (todo_merged or todo_gguf):
        result.room = check_room(export_dir, planned_bytes(inputs.n_params, todo_merged, todo_gguf),
                                 memory_for_merge(inputs, streaming) if todo_merged else 0.0)
    export_dir.mkdir(parents=True, exist_ok=True)

    if need_merged:
        if todo_merged:
            say(f"merging {inputs.adapter_dir} into {inputs.base_name} ({cfg.dtype}) -> {merged_dir}")
            t = time.time()
            info = write_merged(inputs, merged_dir, cfg.dtype, merged_key)
            result.artifacts.append(artifact("merged", merged_dir, "written", time.time() - t, method=info["method"]))
            write_json(export_dir / MANIFEST, {**manifest, "merged_key": merged_key, "keys": {}})
            keys = {}
        else:
            result.artifacts.append(artifact("merged", merged_dir, "unchanged"))
    gguf_files = {}
    for t in cfg.gguf_types:
        path = gguf_paths[t]
        if t in todo_gguf:
            from .gguf import write_gguf

            say(f"writing {path.name}")
            t1 = time.time()
            write_gguf(merged_dir, path, t, name)
            keys[t] = gguf_keys[t]
            write_json(export_dir / MANIFEST, {"merged_key": merged_key, "keys": keys})
            result.artifacts.append(artifact(f"gguf {t}", path, "written", time.time() - t1))
        else:
            result.artifacts.append(artifact(f"gguf {t}", path, "unchanged"))
        gguf_files[t] = str(path)
    write_small_files(cfg, inputs, result, export_dir, merged_dir if need_merged else None, name, gguf_files)
    if cfg.push_to_hub:
        from .hub import files_to_push, push

        say(f"pushing to the Hub: {cfg.hub_repo_id} ({'private' if cfg.hub_private else 'public'})")
        result.hub = push(cfg.hub_repo_id, files_to_push(merged_dir if need_merged else None, export_dir,
                                                          gguf_files, cfg.hub_include_gguf),
                          private=cfg.hub_private, message=f"nbutils export of {inputs.base_name} + LoRA")
    result.seconds = round(time.time() - t0, 1)
    write_json(export_dir / MANIFEST, {"merged_key": merged_key, "keys": keys, "result": result.to_dict()})
    return result


def write_small_files(cfg: ExportConfig, inputs: ExportInputs, result: ExportResult, export_dir: Path,
                      merged_dir: Path | None, name: str, gguf_files: dict[str, str]) -> None:
    """Modelfile, commands and README.md: cheap, rewritten on every run (atomically)."""
    from ..io import atomic_write_text
    from .ollama import pick_gguf, run_commands, write_modelfile

    modelfile = export_dir / "Modelfile"
    if cfg.ollama and gguf_files and merged_dir is not None:
        from transformers import AutoTokenizer

        from .chat import runtime_template

        rt = runtime_template(AutoTokenizer.from_pretrained(str(merged_dir)), inputs.template)
        write_modelfile(export_dir, pick_gguf(gguf_files), rt,
                        num_ctx=min(8192, int(inputs.base_config.get("max_position_embeddings", 4096))))
        result.artifacts.append(artifact("Modelfile", modelfile, "written"))
        if rt.ollama_template is None:
            result.notes.append(f"the chat template ({rt.family}) has no known Ollama equivalent: the Modelfile has no "
                                "TEMPLATE, so Ollama uses the chat template inside the GGUF")
    else:
        modelfile.unlink(missing_ok=True)
    result.commands = run_commands(export_dir, name, gguf_files, EXAMPLE_PROMPT)
    report, note = evaluation(Path(cfg.reports_dir), inputs.adapter_dir)
    result.evaluation = note
    if report is None:
        result.notes.append(f"model card without evaluation: {note}")
    if cfg.card:
        merge_info = {"dtype": cfg.dtype}
        text = render_card(inputs, model_name=name, repo_id=cfg.hub_repo_id or None,
                           dataset_repo_id=cfg.dataset_repo_id, license_=cfg.license, report=report, eval_note=note,
                           provenance_lines=provenance(Path(cfg.data_dir), Path(cfg.dataset_dir)),
                           gguf_files=gguf_files, merge_info=merge_info,
                           commands=[c.replace(f"cd {export_dir} && ", "").replace(f"{export_dir}/", "")
                                     for c in result.commands])
        atomic_write_text(export_dir / "README.md", text)
        result.artifacts.append(artifact("model card", export_dir / "README.md", "written"))
