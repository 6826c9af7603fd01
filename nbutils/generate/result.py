"""What a generate run did and made (also written to data_dir/generate_report.json)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..result import StageResult


@dataclass
class GenerateResult(StageResult):
    """Counts, tokens, cost and failures of one run; `pages` has one row per page/window sent or cached."""

    backend: str = ""
    model: str = ""
    prompt_version: str = ""
    pages_in_file: int = 0
    pages_selected: int = 0
    pages_skipped: dict = field(default_factory=dict)
    pages_cached: int = 0
    calls: int = 0
    pages_failed: list = field(default_factory=list)      # [{paper_id, page, chunk, error, attempts}]
    retried: dict = field(default_factory=dict)           # failed attempts that were retried, by kind
    replies: int = 0
    replies_without_triples: dict = field(default_factory=dict)   # reason -> count
    triples_parsed: int = 0
    triples_kept: int = 0
    drops: dict = field(default_factory=dict)             # reason -> count (parser, judge, grounding, quality)
    grounding: dict = field(default_factory=dict)         # unit, min_grounding, scored, mean, below_min
    judge: dict = field(default_factory=dict)             # the judge's model, calls, tokens, cost, problems
    batch: dict = field(default_factory=dict)             # batch mode: batches submitted/resumed, discount
    triples_per_page: float = 0.0
    papers: int = 0
    run_prompt_tokens: int = 0
    run_completion_tokens: int = 0
    run_cost_usd: float = 0.0
    dataset_prompt_tokens: int = 0
    dataset_completion_tokens: int = 0
    dataset_cost_usd: float = 0.0
    price_known: bool = False
    wall_s: float = 0.0
    requests_per_min: float = 0.0
    limiter_wait_s: float = 0.0
    split: dict = field(default_factory=dict)
    outputs_replaced: bool = False                        # False: triples/JSON/dataset left as they were
    note: str = ""                                        # why the outputs were left, when they were
    pages: list = field(default_factory=list)             # [{paper_id, page, chunk, source, triples, reason}]

    def summary(self) -> str:
        fails = len(self.pages_failed)
        lines = [
            f"{self.backend}:{self.model}  prompt {self.prompt_version}",
            f"pages: {self.pages_selected} pages/windows selected from {self.pages_in_file} pages "
            f"({self.pages_cached} from cache, "
            f"{self.calls} called, {fails} failed); skipped {self.pages_skipped or 'none'}",
            f"retried attempts: {self.retried or 'none'}",
            f"triples: {self.triples_parsed} parsed -> {self.triples_kept} kept from {self.papers} papers "
            f"({self.triples_per_page:.2f} per page)",
            f"replies without triples: {self.replies_without_triples or 'none'}",
            f"dropped: {self.drops or 'none'}",
            f"tokens this run: {self.run_prompt_tokens} in / {self.run_completion_tokens} out, "
            f"~${self.run_cost_usd:.4f}; whole dataset ~${self.dataset_cost_usd:.4f}"
            + ("" if self.price_known else " (model not in the price table)"),
            f"wall {self.wall_s:.1f} s, {self.requests_per_min:.1f} requests/min, "
            f"limiter waits {self.limiter_wait_s:.1f} s",
        ]
        if self.batch:
            lines.append(batch_line("generate", self.batch))
        if self.grounding:
            g = self.grounding
            lines.append(f"grounding ({g['unit']}, no LLM): mean {g['mean']} over {g['scored']} triples"
                         + (f"; {g['below_min']} below min_grounding={g['min_grounding']}" if g["min_grounding"]
                            else ""))
        if self.judge:
            lines.extend(judge_lines(self.judge))
        if self.split:
            lines.append(f"split ({self.split.get('method')}, seed {self.split.get('seed')}): "
                         f"{self.split.get('n_train')} train / {self.split.get('n_test')} test rows, "
                         f"{self.split.get('train_papers')} / {self.split.get('test_papers')} papers")
        if self.note:
            lines.append(self.note)
        for f in self.pages_failed[:5]:
            lines.append(f"  failed {f['paper_id']} p{f['page']}: {f['error']}")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """One row per page/window: where its reply came from (cache, call, failed) and what it gave."""
        return list(self.pages)


def batch_line(what: str, b: dict) -> str:
    """One line on how a stage's batch mode went."""
    return (f"{what} batch API: {b['batches_submitted']} batches submitted, {b['batches_resumed']} resumed from "
            f"cache/batches; {b['requests_submitted']} requests, {b['replies']} replies, {b['resubmitted']} "
            f"resubmitted, {b['failed']} failed, {b['pending']} still pending; cost at "
            f"{100 * (1 - b['discount']):.0f} % of list price"
            + (f"; unreadable result lines {b['bad_result_lines']}" if b["bad_result_lines"] else ""))


def judge_lines(j: dict) -> list[str]:
    """The judge's part of the summary: what judged, what it cost, what went wrong."""
    if not j.get("enabled"):
        return ["judge: off"]
    cost = f"~${j['cost_usd']:.4f}" + ("" if j["price_known"] else " (model not in the price table)")
    lines = [f"judge {j['backend']}:{j['model']} ({j['mode']} mode, prompt {j['prompt_version']}): "
             f"{j['triples_judged']} triples judged on {j['pages']} pages; {j['requests']} requests, "
             f"{j['cached']} from cache, {j['calls']} calls, {len(j['failed'])} failed",
             f"judge tokens this run: {j['prompt_tokens']} in / {j['completion_tokens']} out, {cost}; "
             f"all verdicts ~${j['dataset_cost_usd']:.4f}",
             f"judge: not judged {j['unjudged'] or 'none'}; problems {j['problems'] or 'none'}"]
    if j["backend"] == "local":
        lines.append("judge: a 135M local model's scores mean nothing: this shows the judge path working end to "
                     "end, not the quality of the triples (use a large judge model to filter)")
    if j.get("batch"):
        lines.append(batch_line("judge", j["batch"]))
    if j.get("note"):
        lines.append(f"judge: {j['note']}")
    for f in j["failed"][:3]:
        lines.append(f"  judge failed {f['paper_id']} p{f['page']}: {f['error']}")
    return lines


def batch_saving_usd(prices: dict, model: str, records, discount: float) -> float:
    """What the cached replies that came from a provider batch (`batch_id` set) saved on the list price."""
    recs = [r for r in records if r and r.get("batch_id")]
    tok_in = sum(int(r.get("prompt_tokens") or 0) for r in recs)
    tok_out = sum(int(r.get("completion_tokens") or 0) for r in recs)
    return cost_usd(prices, model, tok_in, tok_out)[0] * discount


def cost_usd(prices: dict, model: str, tok_in: int, tok_out: int) -> tuple[float, bool]:
    """Estimated USD for the tokens, and whether the model is in the price table."""
    price = prices.get(model)
    if not price:
        return 0.0, False
    return (tok_in * price[0] + tok_out * price[1]) / 1e6, True
