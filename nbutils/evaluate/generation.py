"""Generation for stage 05: greedy (or seeded sampled) answers in left-padded, length-sorted batches that stop at
EOS or a stop marker per sequence, cached per example so a killed run resumes."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from nbutils.io import append_jsonl, read_jsonl, sha256_text

# Text after which an Alpaca-style answer is over: a model that goes on writing a next "### Instruction:" (or any
# other "### " section, e.g. the "### Output:" small models invent) has finished its answer. Generation also stops at these (per sequence), which saves most of the base
# model's rambling on a GPU.
STOP_MARKERS = ("\n### ", "### Instruction:", "### Input:", "### Response:")


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.5
    top_p: float = 0.5
    seed: int = 42
    min_new_tokens: int = 0           # benchmarks only: force equal work when EOS never comes
    static_cache: bool = False
    stop_markers: tuple[str, ...] = STOP_MARKERS

    def key(self) -> str:
        d = asdict(self)
        if not self.do_sample:
            d.pop("temperature"), d.pop("top_p"), d.pop("seed")
        d.pop("static_cache")
        return json.dumps(d, sort_keys=True)


def eos_ids(tok, model=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos and pad, plus the model's generation eos ids."""
    ids = {tok.eos_token_id, tok.pad_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if model is not None else None
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def left_pad(batch: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) long tensors, shorter rows padded on the left."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        if len(x):
            ids[i, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
            mask[i, width - len(x):] = 1
    return ids, mask


def cut_at_stop(ids: Sequence[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """New tokens up to the first stop id (excluded), and whether one was met."""
    stop = set(stop)
    for j, t in enumerate(ids):
        if t in stop:
            return list(ids[:j]), True
    return list(ids), False


def clean_answer(text: str, markers: Sequence[str] = STOP_MARKERS) -> str:
    """The answer text: cut where the model starts a next '### ...' section, stripped."""
    cut = len(text)
    for m in markers:
        k = text.find(m)
        if k != -1:
            cut = min(cut, k)
    return text[:cut].strip()


def generate_batch(model, batch: Sequence[Sequence[int]], pad_id: int, stop_ids: Sequence[int], gen: GenParams,
                   tokenizer=None) -> list[dict]:
    """One left-padded `generate` call; per row the new token ids up to the stop token, and whether it
    stopped (else it ran into max_new_tokens). `tokenizer` enables the per-sequence stop markers."""
    import torch

    device = next(model.parameters()).device
    ids, mask = left_pad(batch, pad_id)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens or None, do_sample=gen.do_sample,
        pad_token_id=pad_id, eos_token_id=list(stop_ids), num_beams=1)
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if gen.static_cache:
        kwargs["cache_implementation"] = "static"
    if tokenizer is not None and gen.stop_markers and not gen.min_new_tokens:
        kwargs.update(stop_strings=list(gen.stop_markers), tokenizer=tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    new = out[:, ids.shape[1]:].tolist()
    rows = []
    for row in new:
        kept, stopped = cut_at_stop(row, stop_ids)
        rows.append({"ids": kept, "n_new_tokens": len(kept) + int(stopped), "stopped": stopped})
    return rows


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: a memory problem shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


class PredictionCache:
    """Finished predictions of one (model, adapter on/off, template, generation params) run, one JSON line per
    example, fsync'd after every batch: a killed run loses at most the batch in flight."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.done: dict[str, dict] = {r["key"]: r for r in read_jsonl(self.path)} if self.path else {}

    def get(self, key: str) -> dict | None:
        return self.done.get(key)

    def add(self, records: list[dict]) -> None:
        for r in records:
            self.done[r["key"]] = r
        if self.path:
            append_jsonl(self.path, records)


def encode_prompts(tok, prompts: Sequence[str], max_prompt_tokens: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt (keeping the last `max_prompt_tokens`) and how many were cut."""
    enc = tok(list(prompts), add_special_tokens=True)["input_ids"]
    cut = sum(len(x) > max_prompt_tokens for x in enc)
    return [x[-max_prompt_tokens:] for x in enc], cut


def generate_answers(model, tok, prompts: Sequence[str], gen: GenParams, batch_size: int = 16,
                     max_prompt_tokens: int = 1024, cache: PredictionCache | None = None,
                     desc: str = "generate") -> list[dict]:
    """Answers for `prompts` (same order): {"text", "n_new_tokens", "stopped"}; cached ones are reused."""
    import torch
    from tqdm.auto import tqdm

    cache = cache or PredictionCache(None)
    keys = [sha256_text(p) for p in prompts]
    todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
    enc, _ = encode_prompts(tok, [prompts[i] for i in todo], max_prompt_tokens) if todo else ([], 0)
    stop = eos_ids(tok, model)
    batches = length_sorted_batches([len(x) for x in enc], batch_size)
    with tqdm(total=len(prompts), desc=desc, initial=len(prompts) - len(todo), unit="ex") as bar:
        for b, batch in enumerate(batches):
            if gen.do_sample:
                torch.manual_seed(gen.seed + b)
            rows = generate_batch(model, [enc[j] for j in batch], tok.pad_token_id, stop, gen, tokenizer=tok)
            records = []
            for j, row in zip(batch, rows):
                raw = tok.decode(row["ids"], skip_special_tokens=True)
                text = clean_answer(raw, gen.stop_markers)
                stopped = row["stopped"] or text != raw.strip()  # EOS, or a stop marker ended the answer
                records.append({"key": keys[todo[j]], "text": text, "raw": raw,
                                "n_new_tokens": row["n_new_tokens"], "stopped": stopped})
            cache.add(records)
            bar.update(len(batch))
    return [cache.get(k) for k in keys]

