"""The generation engine shared by 05 (base and tuned passes) and 03's local backend.

    engine = GenerationEngine(model, tokenizer, EngineSettings())    # model: a causal LM or a PeftModel
    with engine.session(gen, lengths, batch_size) as s:                # one pass: shapes fixed, batches planned
        with s.adapter(False):                                         # base pass (a PeftModel's adapter off)
            for batch in s.batches: rows = s.generate([ids[i] for i in batch])

It chooses a path per pass (`choose_path`): `static` (static KV cache + torch.compile / CUDA graphs, the adapter
merged into the weights for the tuned pass) on a CUDA GPU, `plain` (Hugging Face `generate`, PEFT layers as they
are) on CPU - where compiling costs more than it saves on a demo's few batches - and wherever the static path does
not apply. Batches are sorted by length and sized from free GPU memory. `describe()` says what ran; `key()` is
what of it changes answers (it goes into 05's prediction-cache keys).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .params import GenParams, length_sorted_batches
from .plain import generate_plain

PATHS = ("auto", "plain", "static")


@dataclass(frozen=True)
class EngineSettings:
    """How answers are produced (not what is asked: that is GenParams)."""

    path: str = "auto"                # auto | plain | static
    compile: bool | None = None       # static path: torch.compile (CUDA graphs); None: on CUDA only
    merge_adapter: bool = True        # static path: adapter merged into the weights (else the plain path runs)
    check_every: int = 16             # static path: steps between "all rows done?" checks
    memory_fraction: float = 0.85     # share of free GPU memory the KV cache and activations may take

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"engine path {self.path!r}: expected one of {', '.join(PATHS)}")
        if self.check_every < 1:
            raise ValueError(f"check_every={self.check_every} must be >= 1")


def model_device(model) -> str:
    return next(model.parameters()).device.type


def is_peft(model) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def has_4bit(model) -> bool:
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def free_gpu_bytes() -> int:
    import torch

    free, _ = torch.cuda.mem_get_info()
    return int(free)


def choose_path(settings: EngineSettings, model, gen: GenParams) -> tuple[str, str]:
    """(path, why): the static path on a CUDA GPU, the plain path on CPU and where the static one does not fit."""
    if settings.path != "auto":
        return settings.path, "asked for"
    if model_device(model) != "cuda":
        return "plain", "CPU: compiling does not pay for a few batches"
    if gen.static_cache:
        return "plain", "static_cache asks for generate's own static cache"
    if is_peft(model) and not settings.merge_adapter:
        return "plain", "merge_adapter=False keeps PEFT's layers"
    if is_peft(model) and has_4bit(model):
        from .lora import adapted_bytes

        if adapted_bytes(model) > 0.5 * free_gpu_bytes():
            return "plain", "no room for a bf16 copy of the 4-bit adapted projections"
    return "static", "CUDA GPU"


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Bytes of K and V one token takes in the cache, all layers."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def bytes_per_sequence(config, prompt_len: int, cache_len: int, dtype_bytes: int = 2) -> int:
    """Memory one row of a batch needs: its KV cache, the prefill's activations (about 16 hidden-size vectors
    per prompt token plus the MLP's intermediate ones) and two float32 rows of logits."""
    inter = getattr(config, "intermediate_size", 4 * config.hidden_size)
    prefill = prompt_len * (16 * config.hidden_size + 3 * inter) * dtype_bytes
    return kv_bytes_per_token(config, dtype_bytes) * cache_len + prefill + 2 * 4 * config.vocab_size


def fit_batch_size(requested: int, per_sequence: int, free_bytes: int | None, fraction: float = 0.85) -> int:
    """The requested batch size, lowered (never below 1) to what `fraction` of the free memory holds."""
    if not free_bytes:
        return max(1, requested)
    return max(1, min(requested, int(free_bytes * fraction) // max(1, per_sequence)))


class GenerationEngine:
    """One model (a causal LM or a PeftModel) and how it generates; see the module doc."""

    def __init__(self, model, tokenizer, settings: EngineSettings | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or EngineSettings()
        self._decoders: dict = {}
        self.compilations = 0   # static decoders built (each one compiles its step once)

    def lm(self):
        """The plain causal LM under a PeftModel (with LoRA layers swapped out inside a session)."""
        return self.model.get_base_model() if is_peft(self.model) else self.model

    @contextlib.contextmanager
    def session(self, gen: GenParams, lengths: Sequence[int], batch_size: int) -> Iterator[Session]:
        """One pass over prompts of `lengths` tokens: the path chosen, batches planned, weights prepared."""
        path, why = choose_path(self.settings, self.model, gen)
        weights = None
        if path == "static" and is_peft(self.model):
            from .lora import DecodeWeights, adapted_bytes

            on_gpu = model_device(self.model) == "cuda"
            roomy = on_gpu and (has_4bit(self.model) or free_gpu_bytes() > 3 * adapted_bytes(self.model))
            weights = DecodeWeights(self.model, stash_device=None if roomy or not on_gpu else "cpu")
        with weights if weights is not None else contextlib.nullcontext():
            yield Session(self, gen, path, why, list(lengths), batch_size, weights)

    def describe(self, path: str, why: str = "", weights=None, batch_size: int | None = None,
                 compiled: bool | None = None) -> dict:
        d = {"path": path, "why": why}
        if path == "static":
            d.update(compiled=bool(compiled), check_every=self.settings.check_every)
            if weights is not None:
                d["adapter"] = "merged into " + ("a dequantized bf16 copy of the 4-bit base" if weights.dequantized
                                                 else "the base weights (originals restored after)")
        elif is_peft(self.model):
            d["adapter"] = "PEFT LoRA layers (unmerged)"
        if batch_size:
            d["batch_size"] = batch_size
        return d

    def key(self, path: str, compiled: bool) -> str:
        """What of the engine changes answers: empty for the plain path (keys of older caches stay valid)."""
        if path == "plain":
            return ""
        return f"engine=static,compiled={compiled},merged={is_peft(self.model)}"


class Session:
    """One pass of one engine: `batches` (indices, length-sorted), `generate(batch_ids)`, `adapter(on)`."""

    def __init__(self, engine: GenerationEngine, gen: GenParams, path: str, why: str, lengths: list[int],
                 batch_size: int, weights):
        self.engine, self.gen, self.path, self.why, self.weights = engine, gen, path, why, weights
        tok = engine.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        from .params import eos_ids

        self.stop_ids = eos_ids(tok, engine.model)
        self.lengths = lengths
        self.compiled = False
        self.batch_size = self._plan_batch_size(batch_size)
        self.batches = length_sorted_batches(lengths, self.batch_size)
        self.decoder = None

    def _plan_batch_size(self, requested: int) -> int:
        """The requested batch size, lowered to what free GPU memory holds; the plain path also to the number of
        prompts (the static path keeps its shape: a short batch is filled, and the compiled step is reused)."""
        size = max(1, requested)
        if model_device(self.engine.model) == "cuda" and self.lengths:
            cfg = self.engine.lm().config
            longest = max(self.lengths)
            per_seq = bytes_per_sequence(cfg, longest, longest + self.gen.max_new_tokens)
            size = fit_batch_size(size, per_seq, free_gpu_bytes(), self.engine.settings.memory_fraction)
        if self.path == "plain":
            size = min(size, len(self.lengths) or 1)
        return size

    def _static_decoder(self):
        """A decoder whose shape holds this pass: an existing one when it is large enough (no recompilation), else a
        new one with room to spare (cache length rounded up to 256, at least twice the old one)."""
        from .static import StaticDecoder, StaticShape, round_up

        settings = self.engine.settings
        compile_ = settings.compile if settings.compile is not None else model_device(self.engine.model) == "cuda"
        need = max(self.lengths) + self.gen.max_new_tokens
        decoders = self.engine._decoders
        self.compiled = compile_
        for (rows, length, compiled), dec in decoders.items():
            if rows >= self.batch_size and length >= need and compiled == compile_:
                return dec
        old_len = max((length for _, length, _ in decoders), default=0)
        rows = max([self.batch_size] + [r for r, _, _ in decoders])
        cache_len = round_up(max(need, 2 * old_len), 256)
        decoders.clear()   # one decoder (one KV cache) alive at a time
        decoders[rows, cache_len, compile_] = StaticDecoder(self.engine.lm(), StaticShape(rows, cache_len),
                                                            compile=compile_, check_every=settings.check_every)
        self.engine.compilations += 1
        return decoders[rows, cache_len, compile_]

    @contextlib.contextmanager
    def adapter(self, enabled: bool):
        """A PeftModel's adapter on (tuned) or off (base) for what runs inside; no-op for a plain model."""
        model = self.engine.model
        if not is_peft(model):
            yield
        elif self.weights is not None:
            self.weights.use_adapter(enabled)
            yield
        elif enabled:
            yield
        else:
            with model.disable_adapter():
                yield

    def generate(self, batch: Sequence[Sequence[int]]) -> list[dict]:
        """Rows {"ids", "n_new_tokens", "stopped"} for the prompts' token ids (at most batch_size of them)."""
        from .params import rows_from_new_tokens

        if self.path == "plain":
            return generate_plain(self.engine.model, batch, self.pad_id, self.stop_ids, self.gen,
                                  tokenizer=self.engine.tokenizer)
        if self.decoder is None:
            self.decoder = self._static_decoder()
        new = self.decoder.generate(batch, self.pad_id, self.stop_ids, self.gen, tokenizer=self.engine.tokenizer)
        return rows_from_new_tokens(new, self.stop_ids)

    def describe(self) -> dict:
        return self.engine.describe(self.path, self.why, self.weights, self.batch_size, self.compiled)

    def key(self) -> str:
        compiled = self.engine.settings.compile if self.engine.settings.compile is not None \
            else model_device(self.engine.model) == "cuda"
        return self.engine.key(self.path, bool(compiled))


def generate_in_order(engine: GenerationEngine, prompt_ids: Sequence[Sequence[int]], gen: GenParams,
                      batch_size: int, adapter: bool | None = None) -> tuple[list[dict], dict]:
    """Rows for every prompt in input order (length-sorted batches inside), and the session's description.
    `adapter`: a PeftModel's adapter on/off (None: as the model is)."""
    rows: list = [None] * len(prompt_ids)
    with engine.session(gen, [len(p) for p in prompt_ids], batch_size) as s:
        with s.adapter(adapter) if adapter is not None else contextlib.nullcontext():
            for b in s.batches:
                for i, r in zip(b, s.generate([prompt_ids[i] for i in b])):
                    rows[i] = r
        return rows, s.describe()
