"""merged/ -> GGUF files for llama.cpp and Ollama, written with the `gguf` package (gguf-py, maintained in
llama.cpp's own repository and released with it to PyPI).

Why not llama.cpp's convert_hf_to_gguf.py: it is a script in llama.cpp's source tree, not in any PyPI package
(`gguf` ships the library it imports, not the script); the packages that do carry it (llama-cpp-python's source
tree) build llama.cpp's C++ on install. gguf-py writes the same format with llama.cpp's own tensor-name map,
metadata keys and quantisation code, so this module does for the families it knows (Llama 1-3, SmolLM, Mistral's
Llama layout, Qwen2) what the script does: names mapped, Q/K rows permuted to llama.cpp's rotary layout, the
byte-level BPE tokenizer, its merges, special ids and chat template stored inside. Anything else is refused with
the script's command line. gguf-py can quantise to Q8_0 and the legacy Q4_0 but not to the k-quants (Q4_K_M):
those need llama.cpp's C++ `llama-quantize`, whose command the export prints.

Tensors stream: each is read from the safetensors files, converted or quantised (Q8_0 in torch, on the GPU when
there is one, bit-identical to gguf-py's numpy reference) and written, so memory stays at about one tensor."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json
from .inputs import UnsupportedArchitecture

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
PERMUTE_QK = {"llama"}           # llama.cpp's llama graph expects Q/K rows in its own rotary order; qwen2 does not
# tokenizer.json pre-tokenizers -> llama.cpp's pre-tokenizer names (the regexes transformers' GGUF reader maps back)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QK = 32                           # block size of Q8_0 / Q4_0
F16_MAX = 65504.0


@dataclass(frozen=True)
class GGUFType:
    name: str
    file_type: int                # general.file_type (llama.cpp's LlamaFileType)


def gguf_types():
    import gguf

    return {"f16": GGUFType("f16", int(gguf.LlamaFileType.MOSTLY_F16)),
            "bf16": GGUFType("bf16", int(gguf.LlamaFileType.MOSTLY_BF16)),
            "q8_0": GGUFType("q8_0", int(gguf.LlamaFileType.MOSTLY_Q8_0)),
            "q4_0": GGUFType("q4_0", int(gguf.LlamaFileType.MOSTLY_Q4_0))}


def converter_command(merged_dir: str | Path, out: str | Path, outtype: str = "q8_0") -> str:
    return f"python convert_hf_to_gguf.py {merged_dir} --outfile {out} --outtype {outtype}   # in a llama.cpp checkout"


def quantize_command(f16_path: str | Path, out: str | Path, qtype: str = "Q4_K_M") -> str:
    return f"llama-quantize {f16_path} {out} {qtype}"


# ------------------------------------------------------------------------------------------------ checks
def gguf_arch(config: dict, merged_dir: str | Path) -> str:
    """llama.cpp's architecture name for this config, or UnsupportedArchitecture naming what does not fit."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{arch} cannot be written as GGUF here (this exporter knows {', '.join(sorted(ARCHITECTURES))}). The "
            f"merged safetensors in {merged_dir} are complete; convert them with llama.cpp's own script: "
            f"{converter_command(merged_dir, 'model-q8_0.gguf')}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedArchitecture(
            f"{arch} with rope scaling {rope_type!r} (e.g. Llama 3.1's) is not written here: llama.cpp stores it as an "
            f"extra rope_freqs tensor this exporter does not make. Use {converter_command(merged_dir, 'x.gguf')}")
    return ARCHITECTURES[arch]


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer.json, or UnsupportedArchitecture."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern == LLAMA3_SPLIT:
            return "llama-bpe"
        if pattern == QWEN2_SPLIT:
            return "qwen2"
    raise UnsupportedArchitecture(f"the tokenizer's pre-tokenizer ({'+'.join(map(str, kinds))}) is not one this "
                                  "exporter maps to llama.cpp's names (gpt-2, smollm, llama-bpe, qwen2)")


def check_tokenizer(merged_dir: Path) -> str:
    """The pre-tokenizer name; refuses anything but a byte-level BPE tokenizer.json."""
    path = merged_dir / "tokenizer.json"
    if not path.exists():
        raise UnsupportedArchitecture(f"{merged_dir} has no tokenizer.json: only fast byte-level BPE tokenizers "
                                      f"(Llama 3, SmolLM, Qwen2) are written here; use "
                                      f"{converter_command(merged_dir, 'x.gguf')}")
    tj = read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        fallback = " with byte fallback" if model.get("byte_fallback") else ""
        raise UnsupportedArchitecture(
            f"the tokenizer in {merged_dir} is {model.get('type')}{fallback}"
            f" (SentencePiece-style, e.g. Llama 2 / Mistral): only byte-level BPE is written here; use "
            f"{converter_command(merged_dir, 'x.gguf')}")
    return pre_tokenizer_name(tj)


# ------------------------------------------------------------------------------------------------ quantisation
def np_roundf_torch(x):
    """gguf-py's np_roundf (round half away from zero) in torch."""
    import torch

    a = x.abs()
    floored = torch.floor(a)
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored)))


def quantize_q8_0(t) -> np.ndarray:  # noqa: F821
    """Q8_0 blocks (fp16 scale + 32 int8) of a 2-D tensor, as gguf-py's quants.quantize would make them, in torch."""
    import numpy as np
    import torch

    rows, cols = t.shape
    out = np.empty((rows, cols // QK * (2 + QK)), dtype=np.uint8)
    step = max(1, (1 << 24) // cols)            # ~16M values a chunk
    for r0 in range(0, rows, step):
        blocks = t[r0:r0 + step].to(torch.float32).reshape(-1, QK)
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        qs = np_roundf_torch(blocks * inv).to(torch.int8)
        packed = torch.cat([d.to(torch.float16).view(torch.uint8).reshape(-1, 2),
                            qs.view(torch.uint8)], dim=1)
        n = min(step, rows - r0)
        out[r0:r0 + n] = packed.reshape(n, -1).cpu().numpy()
    return out


def to_gguf_array(t, qtype: str, name: str, is_embedding: bool):
    """(numpy array, GGMLQuantizationType) of one tensor for a file of `qtype`: 1-D tensors stay F32; 2-D ones are
    converted (F16/BF16) or quantised (Q8_0; Q4_0 with embeddings/output in Q8_0, as llama-quantize keeps them)."""
    import gguf
    import numpy as np
    import torch

    T = gguf.GGMLQuantizationType
    if t.ndim != 2 or t.shape[-1] % QK:
        return t.to(torch.float32).cpu().numpy(), T.F32
    if qtype == "f16":
        big = float(t.abs().max())
        if big > F16_MAX:
            raise ValueError(f"{name} holds {big:.3g}, beyond float16's range: write gguf_types=['bf16'] instead")
        return t.to(torch.float16).cpu().numpy(), T.F16
    if qtype == "bf16":
        return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint8).reshape(t.shape[0], -1), T.BF16
    if qtype == "q8_0" or (qtype == "q4_0" and is_embedding):
        return quantize_q8_0(t), T.Q8_0
    if qtype == "q4_0":
        return gguf.quants.quantize(t.to(torch.float32).cpu().numpy(), T.Q4_0), T.Q4_0
    raise ValueError(f"unknown GGUF type {qtype!r}")


def permute_qk(t, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's LlamaModel.permute: HF's rotary halves -> llama.cpp's interleaved pairs (rows of each head)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape))


# ------------------------------------------------------------------------------------------------ the file
def merged_tensors(merged_dir: Path) -> Iterator[tuple[str, object]]:
    """(name, lazy loader) of every tensor in merged/'s safetensors, in file order."""
    from safetensors import safe_open

    for f in sorted(merged_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            names = list(fh.keys())
        for n in names:
            yield n, (f, n)


def load_tensor(ref):
    from safetensors import safe_open

    f, n = ref
    with safe_open(str(f), framework="pt") as fh:
        return fh.get_tensor(n)


def tensor_shape(ref) -> list[int]:
    from safetensors import safe_open

    f, n = ref
    with safe_open(str(f), framework="pt") as fh:
        return list(fh.get_slice(n).get_shape())


def vocab_lists(tok, vocab_size: int):
    """(tokens, token types) in id order, as llama.cpp's converter makes them (gaps padded as [PADn])."""
    import gguf

    T = gguf.TokenType
    rev = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    special = set(tok.all_special_tokens)
    decoder = getattr(tok, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            continue
        t = rev[i]
        tokens.append(t)
        if t in added:
            is_special = t in special or getattr(decoder.get(i), "special", False)
            types.append(T.CONTROL if is_special else T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
    return tokens, types


def add_metadata(w, arch: str, config: dict, tok, merged_dir: Path, name: str, pre: str, file_type: int) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_context_length(config.get("max_position_embeddings", 4096))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config.get("num_key_value_heads") or heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type(file_type)
    if file_type not in (int(gguf.LlamaFileType.MOSTLY_F16), int(gguf.LlamaFileType.MOSTLY_BF16)):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types = vocab_lists(tok, config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(merged_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)


def write_gguf(merged_dir: str | Path, out_path: str | Path, qtype: str, name: str) -> dict:
    """One GGUF file from merged/, written to `<out>.partial` then renamed (a killed run leaves no .gguf)."""
    import gguf
    import torch
    from transformers import AutoTokenizer

    merged_dir, out_path = Path(merged_dir), Path(out_path)
    config = read_json(merged_dir / "config.json")
    arch = gguf_arch(config, merged_dir)
    pre = check_tokenizer(merged_dir)
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    kind = gguf_types()[qtype]
    n_layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layers)
    tied = bool(config.get("tie_word_embeddings"))
    device = "cuda" if torch.cuda.is_available() else "cpu"

    plan = []   # (gguf name, ref, permute heads)
    for hf_name, ref in merged_tensors(merged_dir):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UnsupportedArchitecture(f"{hf_name} in {merged_dir} has no GGUF name for {arch}: "
                                          f"{converter_command(merged_dir, out_path.name)}")
        perm = None
        if arch in PERMUTE_QK and ".self_attn.q_proj." in hf_name:
            perm = (heads, heads)
        elif arch in PERMUTE_QK and ".self_attn.k_proj." in hf_name:
            perm = (heads, kv_heads)
        plan.append((new, ref, perm))

    tmp = out_path.with_name(out_path.name + ".partial")
    tmp.unlink(missing_ok=True)
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        add_metadata(w, arch, config, tok, merged_dir, name, pre, kind.file_type)
        arrays_meta = []
        for new, ref, perm in plan:   # tensor infos first: shapes and byte sizes without reading the data
            shape = tensor_shape(ref)
            dtype_t, nbytes, qt = info_for(shape, qtype, new)
            arrays_meta.append((new, ref, perm, shape, qt))
            w.add_tensor_info(new, qt_shape(shape, qt), dtype_t, nbytes, raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for new, ref, perm, _shape, qt in arrays_meta:
            t = load_tensor(ref).to(device)
            if perm is not None:
                t = permute_qk(t, *perm)
            arr, got = to_gguf_array(t, qtype, new, new in ("token_embd.weight", "output.weight"))
            assert got == qt, (new, got, qt)
            w.write_tensor_data(arr)
            del t, arr
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out_path), "type": qtype, "arch": arch, "pre_tokenizer": pre, "tensors": len(plan),
            "bytes": out_path.stat().st_size}


def info_for(shape: list[int], qtype: str, name: str):
    """(numpy dtype handed to add_tensor_info, bytes, GGML type) of a tensor, as to_gguf_array will make it."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    n = 1
    for d in shape:
        n *= d
    if len(shape) != 2 or shape[-1] % QK:
        return np.dtype(np.float32), 4 * n, T.F32
    if qtype == "f16":
        return np.dtype(np.float16), 2 * n, T.F16
    if qtype == "bf16":
        return np.dtype(np.uint8), 2 * n, T.BF16
    if qtype == "q8_0" or name in ("token_embd.weight", "output.weight"):
        return np.dtype(np.uint8), n // QK * 34, T.Q8_0
    return np.dtype(np.uint8), n // QK * 18, T.Q4_0


def qt_shape(shape: list[int], qt) -> list[int]:
    """The byte shape add_tensor_info expects for uint8 data (it maps it back to the element shape)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if qt in (T.F32, T.F16):
        return list(shape)
    block, type_size = gguf.GGML_QUANT_SIZES[qt]
    return [*shape[:-1], shape[-1] // block * type_size]
