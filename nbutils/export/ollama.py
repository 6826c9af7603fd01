"""The Ollama Modelfile (FROM the GGUF, TEMPLATE and stops of the training format, greedy by default) and the exact
commands to run the export with Ollama and llama.cpp."""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text
from .chat import RuntimeTemplate

PREFERRED = ("q8_0", "f16", "bf16", "q4_0")   # which GGUF the Modelfile points at, first present


def pick_gguf(gguf_files: dict[str, str]) -> str | None:
    for t in PREFERRED:
        if t in gguf_files:
            return gguf_files[t]
    return None


def quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError(f"cannot quote {text!r} in a Modelfile (it holds triple quotes)")
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, rt: RuntimeTemplate, num_ctx: int = 4096) -> str:
    """FROM ./<gguf>; TEMPLATE and SYSTEM when the training format is known; a stop per end marker."""
    lines = [f"# Made by nbutils.export: training template {rt.family!r}.", f"FROM ./{gguf_name}", ""]
    if rt.ollama_template is not None:
        lines.append(f"TEMPLATE {quoted(rt.ollama_template)}")
        if rt.system:
            lines.append(f"SYSTEM {quoted(rt.system)}")
    else:
        lines.append("# No TEMPLATE: the chat template could not be mapped to Ollama's; Ollama falls back to the "
                     "chat template stored in the GGUF.")
    lines.append("")
    for s in rt.stops:
        lines.append(f'PARAMETER stop "{s}"' if '"' not in s else f"PARAMETER stop {quoted(s)}")
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {num_ctx}", ""]
    return "\n".join(lines)


def write_modelfile(export_dir: Path, gguf_path: str, rt: RuntimeTemplate, num_ctx: int = 4096) -> Path:
    return atomic_write_text(export_dir / "Modelfile", modelfile_text(Path(gguf_path).name, rt, num_ctx))


def run_commands(export_dir: Path, model_name: str, gguf_files: dict[str, str], example: str) -> list[str]:
    """The exact shell commands: ollama create/run, llama-cli (the chat template inside the GGUF), llama-server,
    and llama-quantize for a 4-bit k-quant from the f16 file."""
    out = []
    main = pick_gguf(gguf_files)
    q = example.replace("'", "'\\''")
    if (export_dir / "Modelfile").exists():
        out += [f"cd {export_dir} && ollama create {model_name} -f Modelfile",
                f"ollama run {model_name} '{q}'"]
    if main:
        out += [f"llama-cli -m {main} --jinja -cnv --temp 0",
                f"llama-server -m {main} --jinja --port 8080   # OpenAI-compatible API on http://127.0.0.1:8080"]
    if "f16" in gguf_files:
        f16 = gguf_files["f16"]
        out.append(f"llama-quantize {f16} {f16.replace('-f16.gguf', '-Q4_K_M.gguf')} Q4_K_M   # 4-bit k-quant "
                   "(llama.cpp's C++ tool; the gguf package cannot make k-quants)")
    return out
