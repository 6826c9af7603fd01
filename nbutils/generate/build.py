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


def parse_pages(cfg: GenerateConfig, jobs: list[PageJob], cached: dict[str, dict], result: GenerateResult,
                new_keys: frozenset[str] = frozenset()) -> list[dict]:
    """Every triple parsed from the selected pages' cached replies, in page order (deterministic), with its
    provenance; fills the result's reply counts and its one row per page (`new_keys`: replies of this run)."""
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
            out.append({"paper_id": j.paper_id, "page": j.page, "chunk": j.chunk, **t,
                        "model": rec.get("model", cfg.model_name), "prompt_version": rec["prompt_version"],
                        "cache_key": j.key, "prompt_tokens": rec.get("prompt_tokens", 0),
                        "completion_tokens": rec.get("completion_tokens", 0)})
    result.replies_without_triples = dict(no_triples.most_common())
    result.drops = dict(drops.most_common())
    return out


def add_grounding(cfg: GenerateConfig, jobs: list[PageJob], candidates: list[dict], result: GenerateResult) -> None:
    """Every candidate's grounding score (no LLM: grounding.py) against the page text its generator saw."""
    from .grounding import Grounder

    text = {(j.paper_id, j.page, j.chunk): j.text for j in jobs}
    g = Grounder(cfg.grounding_unit, corpus=list(dict.fromkeys(text.values())))
    for t in candidates:
        t["grounding"] = g.score(t["output"], text.get((t["paper_id"], t["page"], t["chunk"]), ""))
    scores = [t["grounding"] for t in candidates]
    result.grounding = {"unit": cfg.grounding_unit, "min_grounding": cfg.min_grounding, "scored": len(scores),
                        "mean": round(sum(scores) / len(scores), 4) if scores else None,
                        "below_min": sum(s < cfg.min_grounding for s in scores)}


def score_reason(cfg: GenerateConfig, t: dict) -> str | None:
    """Why the judge's scores or the grounding score drop this triple (None: they keep it)."""
    if t.get("judge_support") is None:
        if cfg.judge and cfg.drop_unjudged:
            return "unjudged"
    else:
        if cfg.min_support and t["judge_support"] < cfg.min_support:
            return "judge_unsupported"
        if cfg.min_clarity and t["judge_clarity"] < cfg.min_clarity:
            return "judge_unclear"
    if cfg.min_grounding and t["grounding"] < cfg.min_grounding:
        return "low_grounding"
    return None


def filter_triples(cfg: GenerateConfig, candidates: list[dict],
                   result: GenerateResult) -> tuple[list[dict], list[dict]]:
    """The kept triples and the dropped ones (each with its `drop_reason`): the score filters (judge,
    grounding) first, then the quality filters (lengths, duplicates), so a triple dropped on its scores is
    never the "original" that a later near-duplicate is dropped against. Fills drops and per-page counts."""
    qf = quality_filter(cfg)
    drops: Counter = Counter(result.drops)
    kept, dropped = [], []
    for t in candidates:
        reason = score_reason(cfg, t)
        if reason is None:
            before = Counter(qf.drops)
            if not qf.keep(t):
                reason = next(iter(qf.drops - before))      # the quality reason it just counted
        if reason:
            drops[reason] += 1
            dropped.append({**t, "drop_reason": reason})
        else:
            kept.append(t)
    result.drops = dict(drops.most_common())
    per_page = Counter((t["paper_id"], t["page"], t["chunk"]) for t in kept)
    for row in result.pages:
        row["triples"] = per_page.get((row["paper_id"], row["page"], row["chunk"]), 0)
    result.triples_kept = len(kept)
    result.papers = len({t["paper_id"] for t in kept})
    result.triples_per_page = len(kept) / result.pages_selected if result.pages_selected else 0.0
    return kept, dropped
