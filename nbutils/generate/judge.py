"""The judge: an LLM reads a page and the triples made from it and says, for each, whether the Output is supported
by the page (1-5, the unsupported claim quoted) and whether the Instruction is clear, self-contained and
answerable (1-5), with a short reason.

Three parts, kept apart so another way of sending (a provider's batch API) can replace the middle one:
- `make_judge_jobs` builds the requests (pure): one per page with all its parsed triples (`judge_mode="page"`,
  the default: the page is paid for once) or one per triple; the page cut to `judge_max_input_chars` (said).
- `call_judge` sends the requests not in the judge's cache through the generation path (calls.send_pending:
  same backends, limiter, retries, redaction) and appends each verdict reply to cache/judge_verdicts.jsonl.
  Its cache key covers the judge's backend model, its prompt version, parameters and the rendered request, so a
  rerun makes no call and a new judge model or prompt judges again.
- `apply_verdicts` (pure) puts scores and reasons on the triples and counts every problem as a reason.

A reply that is not a verdict object is malformed: retried like a malformed generation (an LLMError of kind
"malformed", through the same RetryPolicy); if it stays malformed its last text is cached (rerun: no call) and
its triples stay unjudged ("malformed_verdict"). A verdict for a triple that does not exist, a score out of
1-5, a missing verdict or a refusing judge are reasons in the report; such a triple is never counted as judged.
"""
from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..io import append_jsonl, read_jsonl, sha256_text
from ..llm import Completion, LLMError, Messages, redact
from .calls import LLMSettings, build_backend, send_pending, with_batch
from .config import GenerateConfig
from .jobs import PageJob
from .prompts import JUDGE_LOCAL_REPLY_PREFIX as LOCAL_REPLY_PREFIX
from .prompts import JUDGE_SYSTEM, JUDGE_USER

_REFUSAL = re.compile(r"\b(i(?:'m| am) (?:sorry|unable|not able)|i can(?:not|'t) (?:help|assist|evaluate|judge|"
                      r"comply|provide)|as an ai\b|i apologi[sz]e|i won't)", re.IGNORECASE)
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class JudgeTemplate:
    system: str = JUDGE_SYSTEM
    user: str = JUDGE_USER
    reply_prefix: str = ""
    name: str = "judge"

    @property
    def version(self) -> str:
        return f"{self.name}@{sha256_text(self.system, self.user, self.reply_prefix)[:10]}"

    def messages(self, page: str, triples: list[tuple[int, dict]]) -> Messages:
        listed = json.dumps([{"id": i, "instruction": t["instruction"], "input": t.get("input", ""),
                              "output": t["output"]} for i, t in triples], ensure_ascii=False, indent=1)
        user = self.user.replace("{page}", page).replace("{triples}", listed)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def judge_template(backend: str) -> JudgeTemplate:
    """The judge's prompt (its version is part of every verdict's cache key: a new prompt judges again)."""
    return JudgeTemplate(JUDGE_SYSTEM, JUDGE_USER, LOCAL_REPLY_PREFIX if backend == "local" else "")


@dataclass
class JudgeJob:
    """One judge request: the triples (their indexes in the run's candidate list, and the ids the judge sees)."""

    key: str
    paper_id: str
    page: int
    chunk: int
    ids: list[int]                 # 1-based ids shown to the judge
    indexes: list[int]             # positions of those triples in the candidate list
    messages: Messages
    page_cut: bool = False


@dataclass
class Verdicts:
    """A judge reply, validated: verdicts by id, and what was wrong with it (reason -> count)."""

    by_id: dict[int, dict] = field(default_factory=dict)
    problems: Counter = field(default_factory=Counter)
    malformed: str | None = None     # why the reply is not a verdict object at all
    refused: bool = False


# ------------------------------------------------------------------------------------------- requests
def judge_settings(cfg: GenerateConfig) -> LLMSettings:
    backend = cfg.judge_backend_name
    tpl = judge_template(backend)
    return with_batch(LLMSettings(backend, cfg.judge_model_name, cfg.judge_url, cfg.timeout_s, cfg.rpm, cfg.tpm,
                                  cfg.workers, cfg.max_attempts, cfg.max_wait_s, cfg.batch_size, 1.0, cfg.threads,
                                  tpl.reply_prefix, cfg.data_dir), cfg)


def judge_params(cfg: GenerateConfig) -> dict:
    return {"max_tokens": cfg.judge_max_tokens, "temperature": 0.0, "json_mode": cfg.judge_backend_name != "local"}


def judge_key(backend: str, model: str, version: str, params: dict, messages: Messages) -> str:
    return sha256_text("judge", backend, model, version, json.dumps(params, sort_keys=True),
                       json.dumps(messages, sort_keys=True, ensure_ascii=False))


def pages_to_judge(cfg: GenerateConfig, candidates: list[dict]) -> list[tuple[str, int, int]]:
    """The pages (in run order) whose triples are judged: all, or the first `judge_max_pages`."""
    seen: dict[tuple, None] = {}
    for t in candidates:
        seen.setdefault((t["paper_id"], t["page"], t["chunk"]), None)
    pages = list(seen)
    return pages[: cfg.judge_max_pages] if cfg.judge_max_pages else pages


def make_judge_jobs(cfg: GenerateConfig, page_jobs: list[PageJob], candidates: list[dict]) -> list[JudgeJob]:
    """The judge's requests for the candidates' pages (no sending): per page or per triple (`judge_mode`)."""
    tpl = judge_template(cfg.judge_backend_name)
    params = judge_params(cfg)
    text = {(j.paper_id, j.page, j.chunk): j.text for j in page_jobs}
    by_page: dict[tuple, list[int]] = {}
    for i, t in enumerate(candidates):
        by_page.setdefault((t["paper_id"], t["page"], t["chunk"]), []).append(i)
    jobs = []
    for ident in pages_to_judge(cfg, candidates):
        page = text.get(ident, "")
        cut = len(page) > cfg.judge_max_input_chars
        page = page[: cfg.judge_max_input_chars]
        idx = by_page[ident]
        groups = [idx] if cfg.judge_mode == "page" else [[i] for i in idx]
        for group in groups:
            shown = [(n + 1, candidates[i]) for n, i in enumerate(group)]
            msgs = tpl.messages(page, shown)
            key = judge_key(cfg.judge_backend_name, cfg.judge_model_name, tpl.version, params, msgs)
            jobs.append(JudgeJob(key, *ident, [n for n, _ in shown], group, msgs, cut))
    return jobs


# ------------------------------------------------------------------------------------------- replies
def _json_object(text: str):
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = (m.group(1) if m else text).strip()
    try:
        return json.loads(body)
    except ValueError:
        start, end = body.find("{"), body.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(body[start: end + 1])
            except ValueError:
                pass
    raise ValueError("not JSON")


def _score(value) -> int | None:
    """An integer 1-5 (also "4", 4.0); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(?:\.0+)?\s*", value):
        value = float(value)
    if isinstance(value, (int, float)) and float(value).is_integer() and 1 <= int(value) <= 5:
        return int(value)
    return None


def _text(value) -> str:
    s = value if isinstance(value, str) else ("" if value is None else json.dumps(value, ensure_ascii=False))
    s = " ".join(s.split())
    return s if len(s) <= MAX_REASON_CHARS else s[:MAX_REASON_CHARS] + "…"


def parse_verdicts(text: str, ids: list[int]) -> Verdicts:
    """Validate a judge reply against the ids it was asked about. Never raises."""
    out = Verdicts()
    try:
        data = _json_object(text or "")
    except ValueError:
        if _REFUSAL.search(text or ""):
            out.refused = True
        else:
            out.malformed = f"not JSON: {_text(text)[:120]!r}"
        return out
    items = data.get("verdicts", data.get("Verdicts")) if isinstance(data, dict) else data
    if isinstance(data, dict) and items is None and "support" in {str(k).lower() for k in data}:
        items = [data]
    if not isinstance(items, list):
        out.malformed = "no \"verdicts\" list"
        return out
    wanted = set(ids)
    for item in items:
        if not isinstance(item, dict):
            out.problems["verdict_not_an_object"] += 1
            continue
        low = {str(k).lower(): v for k, v in item.items()}
        raw_id = low.get("id", ids[0] if len(ids) == 1 else None)
        vid = _score_id(raw_id)
        if vid is None or vid not in wanted:
            out.problems["verdict_for_unknown_triple"] += 1
            continue
        if vid in out.by_id:
            out.problems["duplicate_verdict"] += 1
            continue
        support, clarity = _score(low.get("support")), _score(low.get("clarity"))
        if support is None or clarity is None:
            absent = low.get("support") is None or low.get("clarity") is None
            reason = "missing_score" if absent else "score_out_of_range"
            out.problems[reason] += 1
            out.by_id[vid] = {"invalid": reason}
            continue
        out.by_id[vid] = {"support": support, "clarity": clarity, "claim": _text(low.get("unsupported_claim")),
                          "reason": _text(low.get("reason"))}
    return out


def _score_id(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


class VerdictCheck:
    """The judge's backend with its replies checked: a reply that is not a verdict object raises a retryable
    LLMError("malformed") carrying its text, so the generation path's retries ask again (local batched models,
    which are not retried, get the error in their place)."""

    def __init__(self, inner, ids_by_messages: dict[str, list[int]]):
        self.inner, self.ids = inner, ids_by_messages
        self.malformed_tokens = [0, 0]          # prompt, completion tokens of malformed replies (paid for too)
        self._lock = threading.Lock()
        self.name, self.model = inner.name, inner.model
        self.supports_json_mode = inner.supports_json_mode
        self.batch_size = getattr(inner, "batch_size", 1)

    def _check(self, messages: Messages, done: Completion) -> Completion:
        ids = self.ids.get(_messages_id(messages), [1])
        v = parse_verdicts(done.text, ids)
        if v.malformed and (done.text or "").strip():
            with self._lock:
                self.malformed_tokens[0] += done.prompt_tokens
                self.malformed_tokens[1] += done.completion_tokens
            err = LLMError("malformed", f"judge reply is not a verdict object ({v.malformed})")
            err.reply = done   # type: ignore[attr-defined]  # kept: the last malformed reply is cached
            raise err
        return done

    check_reply = _check     # batch mode (llm/batch.py) checks each reply it reads back with it

    def complete(self, messages: Messages, **params) -> Completion:
        return self._check(messages, self.inner.complete(messages, **params))

    def complete_batch(self, conversations: list[Messages], **params) -> list:
        out = []
        for m, done in zip(conversations, self.inner.complete_batch(conversations, **params)):
            try:
                out.append(self._check(m, done))
            except LLMError as e:
                out.append(e)
        return out


def _messages_id(messages: Messages) -> str:
    return sha256_text(json.dumps(messages, sort_keys=True, ensure_ascii=False))


# ------------------------------------------------------------------------------------------- sending
def load_verdict_cache(path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for rec in read_jsonl(path):
        out.setdefault(rec["key"], rec)
    return out


def verdict_record(key: str, job: JudgeJob, s: LLMSettings, version: str, params: dict, res: Completion,
                   malformed: str = "") -> dict:
    return {"key": key, "paper_id": job.paper_id, "page": job.page, "chunk": job.chunk, "ids": job.ids,
            "backend": s.backend, "model": s.model, "prompt_version": version, "params": params,
            "reply": redact(res.text), "malformed": malformed, "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
            "attempts": res.attempts, "batch_id": res.batch_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds")}


def call_judge(cfg: GenerateConfig, jobs: list[JudgeJob], cached: dict[str, dict], report: dict) -> None:
    """Send the judge requests not in its cache; verdict replies (and last malformed ones) are appended to the
    cache as they arrive; failures go to report["failed"] (retried by a rerun)."""
    pending = {j.key: j for j in jobs if j.key not in cached}
    report["cached"] = len({j.key for j in jobs} - set(pending))
    if not pending:
        return
    s = judge_settings(cfg)
    params = judge_params(cfg)
    version = judge_template(s.backend).version
    backend = VerdictCheck(build_backend(s, params["json_mode"]),
                           {_messages_id(j.messages): j.ids for j in pending.values()})

    def on_reply(key: str, res: Completion) -> dict:
        append_jsonl(cfg.judge_cache_path, [verdict_record(key, pending[key], s, version, params, res)])
        return {}

    def on_error(key: str, err: LLMError) -> None:
        job = pending[key]
        reply = getattr(err, "reply", None)
        if err.kind == "malformed" and reply is not None:     # still malformed after the retries: kept
            append_jsonl(cfg.judge_cache_path, [verdict_record(key, job, s, version, params, reply, str(err))])
            return
        report["failed"].append({"paper_id": job.paper_id, "page": job.page, "chunk": job.chunk,
                                 "ids": job.ids, "error": err.describe(), "attempts": err.attempts})

    stats = send_pending(backend, s, {k: j.messages for k, j in pending.items()}, params, desc="judge",
                         unit="call", on_reply=on_reply, on_error=on_error)
    report["calls"] = stats.calls
    # every reply is paid for: verdicts, and malformed ones (retried or kept) alike
    report["prompt_tokens"] += stats.prompt_tokens + backend.malformed_tokens[0]
    report["completion_tokens"] += stats.completion_tokens + backend.malformed_tokens[1]
    report["retried"] = dict(stats.retried.most_common())
    report["limiter_wait_s"] = round(stats.limiter_wait_s, 2)
    report["batch"] = stats.batch


# ------------------------------------------------------------------------------------------- verdicts
def blank_judgement(t: dict) -> None:
    t.update(judge_support=None, judge_clarity=None, judge_claim="", judge_reason="", judge_note="not_judged")


def apply_verdicts(jobs: list[JudgeJob], cached: dict[str, dict], candidates: list[dict], report: dict) -> None:
    """Scores and reasons onto the candidates; every triple not judged gets its reason in `judge_note`, and
    report["unjudged"] / report["problems"] count them."""
    unjudged: Counter = Counter()
    problems: Counter = Counter()
    failed = {(f["paper_id"], f["page"], f["chunk"], tuple(f["ids"])) for f in report["failed"]}
    for job in jobs:
        rec = cached.get(job.key)
        if job.page_cut:
            problems["page_cut_for_judge"] += 1
        if rec is None:
            note = "judge_failed" if (job.paper_id, job.page, job.chunk, tuple(job.ids)) in failed else "not_sent"
            for i in job.indexes:
                candidates[i]["judge_note"] = note
            continue
        report["dataset_prompt_tokens"] += int(rec.get("prompt_tokens") or 0)
        report["dataset_completion_tokens"] += int(rec.get("completion_tokens") or 0)
        v = parse_verdicts(rec["reply"], job.ids)
        problems.update(v.problems)
        if v.refused:
            problems["judge_refused"] += 1
        if v.malformed:
            problems["malformed_verdict"] += 1
        for vid, i in zip(job.ids, job.indexes):
            t = candidates[i]
            got = v.by_id.get(vid)
            if v.refused or v.malformed:
                t["judge_note"] = "judge_refused" if v.refused else "malformed_verdict"
            elif got is None:
                t["judge_note"] = "no_verdict"
            elif "invalid" in got:
                t["judge_note"] = got["invalid"]
            else:
                t.update(judge_support=got["support"], judge_clarity=got["clarity"], judge_claim=got["claim"],
                         judge_reason=got["reason"], judge_note="cut_page" if job.page_cut else "")
    for t in candidates:
        if t["judge_support"] is None:
            unjudged[t["judge_note"]] += 1
    report["triples_judged"] = sum(1 for t in candidates if t["judge_support"] is not None)
    report["unjudged"] = dict(unjudged.most_common())
    report["problems"] = dict(problems.most_common())


def new_report(cfg: GenerateConfig) -> dict:
    """The judge's part of generate_report.json."""
    s = judge_settings(cfg)
    return {"enabled": cfg.judge, "backend": s.backend, "model": s.model, "mode": cfg.judge_mode,
            "prompt_version": judge_template(s.backend).version, "min_support": cfg.min_support,
            "min_clarity": cfg.min_clarity, "pages": 0, "requests": 0, "cached": 0, "calls": 0, "failed": [],
            "retried": {}, "limiter_wait_s": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
            "dataset_prompt_tokens": 0, "dataset_completion_tokens": 0, "dataset_cost_usd": 0.0,
            "price_known": False, "triples_judged": 0, "unjudged": {}, "problems": {}, "note": ""}


def run_judge(cfg: GenerateConfig, page_jobs: list[PageJob], candidates: list[dict]) -> dict:
    """Judge the candidates (all parsed triples, before the filters): build requests, send what is not
    cached, apply the verdicts. Returns the judge's report."""
    from .result import batch_saving_usd, cost_usd

    report = new_report(cfg)
    for t in candidates:
        blank_judgement(t)
    if not cfg.judge or not candidates:
        return report
    jobs = make_judge_jobs(cfg, page_jobs, candidates)
    report["pages"] = len({(j.paper_id, j.page, j.chunk) for j in jobs})
    report["requests"] = len(jobs)
    cached = load_verdict_cache(cfg.judge_cache_path)
    try:
        call_judge(cfg, jobs, cached, report)
    except LLMError as e:      # a bad judge key or model: every judge call would fail the same way
        raise LLMError(e.kind, f"the judge ({report['backend']}:{report['model']}) cannot run: {e}. Generation's "
                               "replies are cached: fix the judge's settings (or judge=False) and rerun",
                       e.status) from e
    verdicts = load_verdict_cache(cfg.judge_cache_path)
    apply_verdicts(jobs, verdicts, candidates, report)
    model = report["model"]
    report["cost_usd"], report["price_known"] = cost_usd(cfg.prices, model, report["prompt_tokens"],
                                                         report["completion_tokens"])
    if report.get("batch"):                # sent through the batch API: its price
        report["cost_usd"] *= 1 - report["batch"]["discount"]
    report["dataset_cost_usd"], _ = cost_usd(cfg.prices, model, report["dataset_prompt_tokens"],
                                             report["dataset_completion_tokens"])
    report["dataset_cost_usd"] -= batch_saving_usd(cfg.prices, model, {j.key: verdicts.get(j.key) for j in jobs}
                                                   .values(), cfg.batch_discount)
    all_pages = len({(t["paper_id"], t["page"], t["chunk"]) for t in candidates})
    if report["pages"] < all_pages:
        report["note"] = (f"judge_max_pages={cfg.judge_max_pages}: only the first {report['pages']} pages' "
                          "triples were judged; the others are kept unjudged")
    return report


__all__ = ["JudgeTemplate", "JudgeJob", "Verdicts", "make_judge_jobs", "parse_verdicts", "call_judge",
           "apply_verdicts", "run_judge", "judge_settings", "judge_params", "load_verdict_cache", "JUDGE_USER",
           "JUDGE_SYSTEM", "LOCAL_REPLY_PREFIX"]
