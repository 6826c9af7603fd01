"""The static path: a decode loop over transformers' StaticCache, its step compiled by torch.compile in
"reduce-overhead" mode (CUDA graphs: one launch per step instead of hundreds of kernel launches from Python).

The loop keeps every shape fixed for a whole pass - batch rows (a short last batch is filled with copies of its
first row, whose output is dropped), cache length - so the step is compiled and captured once. It does not ask
the GPU "is everyone done?" every token (a host sync per step): it checks every `check_every` steps; rows that
finished earlier are fed the pad token and their extra tokens are cut at the first stop id, as the plain path cuts
them. Stop markers (text such as "\n### ") are looked for on the host at the same checks.

Greedy decoding gives the same tokens as `generate` up to floating-point differences between the kernels the two
paths run (a different attention kernel, fused operations); sampling uses its own seeded draws.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

from .params import GenParams, left_pad


@dataclass
class StaticShape:
    batch_size: int
    cache_len: int


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def find_marker_end(tokenizer, ids: Sequence[int], markers: Sequence[str], start: int) -> int | None:
    """Smallest k > start such that the text of ids[:k] holds a marker that the text of ids[:start] did not
    (the token completing it is kept, as generate's stop_strings keeps it); None when there is none."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    if not any(m in text for m in markers):
        return None
    before = tokenizer.decode(list(ids[:start]), skip_special_tokens=True)
    already = sum(before.count(m) for m in markers)
    for k in range(start + 1, len(ids) + 1):
        t = tokenizer.decode(list(ids[:k]), skip_special_tokens=True)
        if sum(t.count(m) for m in markers) > already:
            return k
    return None


class StaticDecoder:
    """Decodes fixed-shape batches for one causal LM (the plain HF model, LoRA layers already taken out)."""

    def __init__(self, lm, shape: StaticShape, compile: bool = True, check_every: int = 16, gqa: bool = True):
        import torch
        from transformers import StaticCache

        self.lm, self.shape, self.check_every = lm, shape, max(1, check_every)
        self.device = next(lm.parameters()).device
        self.cache = StaticCache(config=lm.config, max_cache_len=shape.cache_len)
        params = inspect.signature(lm.forward).parameters
        self.pass_cache_position = "cache_position" in params
        self.cache_arg = "cache" if "cache" in params else "past_key_values"   # renamed in later transformers
        self.compiled = bool(compile)
        self.gqa = gqa
        self.step = torch.compile(self._step, mode="reduce-overhead", fullgraph=False, dynamic=False) \
            if compile else self._step

    # ------------------------------------------------------------------ model calls
    def _forward(self, ids, position_ids, cache_position, mask, logits_to_keep: int = 1):
        kwargs = {"input_ids": ids, "position_ids": position_ids, "attention_mask": mask, self.cache_arg: self.cache,
                  "use_cache": True, "logits_to_keep": logits_to_keep}
        if self.pass_cache_position:
            kwargs["cache_position"] = cache_position
        return self.lm(**kwargs).logits[:, -1, :]

    def _step(self, ids, position_ids, cache_position, mask):
        return self._forward(ids, position_ids, cache_position, mask).float()

    # ------------------------------------------------------------------ one batch
    def generate(self, batch: Sequence[Sequence[int]], pad_id: int, stop_ids: Sequence[int], gen: GenParams,
                 tokenizer=None) -> list[list[int]]:
        """New token ids per row (max_new_tokens of them, or fewer when every row stopped; rows that stopped are
        padded with pad_id after their stop token). Rows beyond the batch size raise."""
        import torch

        B, L = self.shape.batch_size, self.shape.cache_len
        n = len(batch)
        if n > B:
            raise ValueError(f"batch of {n} rows > the static batch size {B}")
        rows = [list(r) for r in batch] + [list(batch[0])] * (B - n)
        ids, mask2 = left_pad(rows, pad_id)
        P = ids.shape[1]
        if P + gen.max_new_tokens > L:
            raise ValueError(f"prompt of {P} tokens + {gen.max_new_tokens} new > the static cache length {L}")
        dev = self.device
        ids, mask2 = ids.to(dev), mask2.to(dev)
        mask = torch.zeros((B, L), dtype=torch.long, device=dev)   # a column turns 1 as its token is fed
        mask[:, :P] = mask2
        positions = (mask2.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(sorted(set(stop_ids)), device=dev)
        penalty = gen.repetition_penalty
        seen = None
        if penalty != 1.0:   # every id of the row so far, as generate's repetition penalty sees them (padding too)
            seen = ids[:, :1].expand(B, L).clone()
            seen[:, :P] = ids
        gen_rng = None
        if gen.do_sample:
            gen_rng = torch.Generator(device=dev).manual_seed(gen.seed)
        from .gqa import decode_attention

        with torch.inference_mode(), decode_attention(self.lm, self.gqa):
            self.cache.reset()
            logits = self._forward(ids, positions, torch.arange(P, device=dev), mask).float()
            out = torch.full((B, gen.max_new_tokens), pad_id, dtype=torch.long, device=dev)
            done = torch.zeros(B, dtype=torch.bool, device=dev)
            pos = positions[:, -1:] + 1
            cache_pos = torch.tensor([P], device=dev)
            host_done = [False] * n
            checked = 0
            for t in range(gen.max_new_tokens):
                nxt = self._choose(logits, t, gen, stop, seen, P, gen_rng)
                nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                out[:, t] = nxt
                done |= torch.isin(nxt, stop)
                if seen is not None:
                    seen[:, P + t] = nxt
                last = t + 1 == gen.max_new_tokens
                if (t + 1) % self.check_every == 0 or last:
                    if tokenizer is not None and gen.stop_markers and not gen.min_new_tokens:
                        self._mark_stop_markers(out, done, host_done, checked, t + 1, tokenizer, gen, pad_id)
                    checked = t + 1
                    if last or bool(done[:n].all()):
                        break
                mask[:, P + t] = 1
                if self.compiled:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self.step(nxt[:, None], pos, cache_pos, mask)
                pos = pos + 1
                cache_pos = cache_pos + 1
            return out[:n, :t + 1].tolist()

    def _choose(self, logits, t: int, gen: GenParams, stop, seen, P: int, rng):
        """The next token of every row from this step's logits (float32, (B, V))."""
        import torch

        if t < gen.min_new_tokens:
            logits = logits.index_fill(1, stop, float("-inf"))
        if seen is not None:
            hist = seen[:, :P + t]
            score = torch.gather(logits, 1, hist)
            score = torch.where(score < 0, score * gen.repetition_penalty, score / gen.repetition_penalty)
            logits = logits.scatter(1, hist, score)
        if not gen.do_sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits / max(gen.temperature, 1e-5), -1)
        if gen.top_p < 1.0:
            sorted_p, idx = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > gen.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(1, idx, sorted_p)
        return torch.multinomial(probs, 1, generator=rng)[:, 0]

    def _mark_stop_markers(self, out, done, host_done, start: int, end: int, tokenizer, gen: GenParams,
                           pad_id: int) -> None:
        """Rows whose new text completed a stop marker between tokens `start` and `end`: the tokens after the one
        completing it become padding and the row is done (the answer text is cut at the marker later anyway)."""

        tail = out[:len(host_done), :end].tolist()
        flags = done[:len(host_done)].tolist()
        hits = []
        for r, ids in enumerate(tail):
            if host_done[r] or flags[r]:
                host_done[r] = True
                continue
            window_start = max(0, start - 8)
            k = find_marker_end(tokenizer, ids[:end], gen.stop_markers, window_start) \
                if any(m in tokenizer.decode(ids[window_start:end], skip_special_tokens=True)
                       for m in gen.stop_markers) else None
            if k is not None:
                hits.append((r, k))
                host_done[r] = True
        for r, k in hits:
            out[r, k:] = pad_id
            done[r] = True
