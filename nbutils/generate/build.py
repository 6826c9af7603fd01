"""Turning cached replies into the dataset's rows: parse each reply, trim a cut-off last field, filter."""
from __future__ import annotations

import re
from collections import Counter

from ..triples import ParsedReply, QualityFilter, parse_json_reply, parse_reply
from .config import GenerateConfig
from .jobs import PageJob
from .result import GenerateResult


def parse_reply_text(text: str, json_mode: bool) -> ParsedReply:
    return parse_json_reply(text) if json_mode else parse_reply(text)


def trim_unfinished(text: str, keep_at_least: float = 0.5) -> str:
    """A field cut off by the token limit, trimmed back to its last full sentence (if that keeps most of it)."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    if ends and ends[-1] >= keep_at_least * len(text):
        return text[: ends[-1]]
    return text


def quality_filter(cfg: GenerateConfig) -> QualityFilter:
    return QualityFilter(min_instruction_chars=cfg.min_instruction_chars, min_output_chars=cfg.min_output_chars,
                         max_instruction_chars=cfg.max_field_chars, max_input_chars=cfg.max_field_chars,
                         max_output_chars=cfg.max_field_chars, near_dup_rouge_l=cfg.near_dup_rouge_l)


def build_triples(cfg: GenerateConfig, jobs: list[PageJob], cached: dict[str, dict], result: GenerateResult,
                  new_keys: frozenset[str] = frozenset()) -> list[dict]:
    """Parse and filter every cached reply of the selected pages, in page order (deterministic); fills the
    result's counts and its one row per page (`new_keys`: replies that arrived in this run)."""
    qf = quality_filter(cfg)
    no_triples: Counter = Counter()
    drops: Counter = Counter()
    failed = {(f["paper_id"], f["page"], f["chunk"]): f["error"] for f in result.pages_failed}
    out: list[dict] = []
    used_keys: set = set()
    for j in jobs:
        row = {"paper_id": j.paper_id, "page": j.page, "chunk": j.chunk, "reply": "", "triples": 0, "note": ""}
        result.pages.append(row)
        rec = cached.get(j.key)
        if rec is None:
            row.update(reply="failed", note=failed.get((j.paper_id, j.page, j.chunk), "not sent"))
            continue
        row["reply"] = "new" if j.key in new_keys else "cached"
        result.replies += 1
        if j.key not in used_keys:
            used_keys.add(j.key)
            result.dataset_prompt_tokens += int(rec.get("prompt_tokens") or 0)
            result.dataset_completion_tokens += int(rec.get("completion_tokens") or 0)
        parsed = parse_reply_text(rec["reply"], bool(rec.get("params", {}).get("json_mode")))
        if parsed.reason:
            no_triples[parsed.reason] += 1
            row["note"] = parsed.reason
        drops.update(parsed.dropped)
        result.triples_parsed += len(parsed.triples)
        if parsed.triples and rec.get("finish_reason") == "length":   # the reply was cut off mid-field
            last = parsed.triples[-1]
            last["output"] = trim_unfinished(last["output"])
        for t in parsed.triples:
            if qf.keep(t):
                row["triples"] += 1
                out.append({"paper_id": j.paper_id, "page": j.page, "chunk": j.chunk, **t,
                            "model": rec.get("model", cfg.model_name), "prompt_version": rec["prompt_version"],
                            "cache_key": j.key, "prompt_tokens": rec.get("prompt_tokens", 0),
                            "completion_tokens": rec.get("completion_tokens", 0)})
    drops.update(qf.drops)
    result.replies_without_triples = dict(no_triples.most_common())
    result.drops = dict(drops.most_common())
    result.triples_kept = len(out)
    result.papers = len({t["paper_id"] for t in out})
    result.triples_per_page = len(out) / result.pages_selected if result.pages_selected else 0.0
    return out
