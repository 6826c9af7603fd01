"""What a generation pass is asked for (GenParams) and the small pieces every path shares: stop ids, left padding,
cutting at a stop token or a stop marker, length-sorted batches."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# Text after which an Alpaca-style answer is over: a model that goes on writing a next "### Instruction:" (or any
# other "### " section, e.g. the "### Output:" small models invent) has finished its answer. Generation also stops
# at these (per sequence), which saves most of the base model's rambling on a GPU.
STOP_MARKERS = ("\n### ", "### Instruction:", "### Input:", "### Response:")


@dataclass(frozen=True)
class GenParams:
    """Decoding settings of one pass. `key()` is the part that changes answers (for caches)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.5
    top_p: float = 0.5
    seed: int = 42
    min_new_tokens: int = 0           # benchmarks only: force equal work when EOS never comes
    static_cache: bool = False        # plain path only: generate(cache_implementation="static")
    stop_markers: tuple[str, ...] = STOP_MARKERS
    repetition_penalty: float = 1.0   # 03's local backend

    def key(self) -> str:
        d = asdict(self)
        if not self.do_sample:
            d.pop("temperature"), d.pop("top_p"), d.pop("seed")
        d.pop("static_cache")
        if self.repetition_penalty == 1.0:   # keeps the keys of caches written before this field existed
            d.pop("repetition_penalty")
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


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: a memory problem shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def rows_from_new_tokens(new: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> list[dict]:
    """Per row: the new ids up to the stop token, how many tokens were made (the stop token counts) and whether it
    stopped (else it ran into max_new_tokens)."""
    rows = []
    for row in new:
        kept, stopped = cut_at_stop(row, stop_ids)
        rows.append({"ids": kept, "n_new_tokens": len(kept) + int(stopped), "stopped": stopped})
    return rows
