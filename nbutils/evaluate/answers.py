"""Generation for stage 05: answers through the shared engine (nbutils.decoding: the plain HF `generate` path on
CPU, the static compiled path with the adapter merged on a GPU), length-sorted batches that stop at EOS or a stop
marker per sequence, cached per example so a killed run resumes."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nbutils.decoding import (
    STOP_MARKERS,
    EngineSettings,
    GenerationEngine,
    GenParams,
    Session,
    clean_answer,
    cut_at_stop,
    eos_ids,
    left_pad,
    length_sorted_batches,
)
from nbutils.decoding import generate_plain as generate_batch  # the plain path, under its old name
from nbutils.io import append_jsonl, read_jsonl, sha256_text

__all__ = ["STOP_MARKERS", "GenParams", "PredictionCache", "encode_prompts", "generate_answers", "generate_batch",
           "eos_ids", "left_pad", "cut_at_stop", "clean_answer", "length_sorted_batches"]


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
                     desc: str = "generate", session: Session | None = None) -> list[dict]:
    """Answers for `prompts` (same order): {"text", "n_new_tokens", "stopped"}; cached ones are reused.
    `session`: an engine session (stage 05 opens one for both passes); None: the plain path, model as it is."""
    import contextlib

    import torch
    from tqdm.auto import tqdm

    cache = cache or PredictionCache(None)
    keys = [sha256_text(p) for p in prompts]
    todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
    enc, _ = encode_prompts(tok, [prompts[i] for i in todo], max_prompt_tokens) if todo else ([], 0)
    with contextlib.ExitStack() as stack:
        if session is None and enc:
            engine = GenerationEngine(model, tok, EngineSettings(path="plain"))
            session = stack.enter_context(engine.session(gen, [len(x) for x in enc], batch_size))
        batches = length_sorted_batches([len(x) for x in enc], session.batch_size if session else batch_size)
        with tqdm(total=len(prompts), desc=desc, initial=len(prompts) - len(todo), unit="ex") as bar:
            for b, batch in enumerate(batches):
                if gen.do_sample:
                    torch.manual_seed(gen.seed + b)
                rows = session.generate([enc[j] for j in batch])
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
