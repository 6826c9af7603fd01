"""Stage 03: pages -> instruction/input/output triples with an LLM -> triples.jsonl, the original-format
JSON and the frozen split.

Every raw reply is appended (fsync'd) to `data_dir/cache/generate_replies.jsonl` before it is parsed, keyed
by sha256(backend model + prompt version + generation parameters + rendered prompt). Outputs are rebuilt
from that cache on every run, so a rerun makes no calls for cached pages, and a run killed at any moment
loses only requests in flight and never duplicates a row.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from .config import StageConfig
from .io import append_jsonl, read_json, read_jsonl, sha256_text, write_json, write_jsonl
from .llm import DEFAULT_MODELS, PROVIDER_LIMITS, LLMError, RateLimiter, RetryPolicy, iter_completions, make_backend
from .triples import QualityFilter, parse_json_reply, parse_reply

CACHE_FILE = "generate_replies.jsonl"
REPORT_FILE = "generate_report.json"

# ------------------------------------------------------------------------------------ prompts
# The original project's prompt (reconstructed): three "Triple N:" blocks from one page of a paper.
ORIGINAL_PROMPT = """Generate three instruction-input-output triples based on the following text from a research paper. Each triple should have an instruction (a task or question about the text), an input (the context the task needs, which may be empty) and the expected output. Format each triple exactly as follows:

Triple 1:
Instruction: [instruction]
Input: [input]
Output: [output]

Triple 2:
Instruction: [instruction]
Input: [input]
Output: [output]

Triple 3:
Instruction: [instruction]
Input: [input]
Output: [output]

Text:
{text}"""

JSON_PROMPT = """Generate three instruction-input-output triples based on the following text from a research paper. Each triple has an instruction (a task or question about the text), an input (the context the task needs, may be "") and the expected output. Reply with JSON only, in this shape:
{"triples": [{"instruction": "...", "input": "...", "output": "..."}, ...]}

Text:
{text}"""

# The demo's 135M model cannot follow the long prompt: a short one, and the reply started for it.
DEMO_PROMPT = """Here is a text from a research paper:

{text}

Write a question about this text and answer it."""
DEMO_REPLY_PREFIX = "Triple 1:\nInstruction:"


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt: the user message (with `{text}`), an optional system message, an optional start of the
    assistant's reply (local models only), and whether it asks for JSON. `version` = name@hash."""

    name: str
    user: str
    system: str = ""
    reply_prefix: str = ""
    json_mode: bool = False

    @property
    def version(self) -> str:
        return f"{self.name}@{sha256_text(self.system, self.user, self.reply_prefix, str(self.json_mode))[:10]}"

    def messages(self, text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user.replace("{text}", text)}]


BUILTIN_PROMPTS = {
    "original": PromptTemplate("original", ORIGINAL_PROMPT),
    "json": PromptTemplate("json", JSON_PROMPT, json_mode=True),
    "demo": PromptTemplate("demo", DEMO_PROMPT, reply_prefix=DEMO_REPLY_PREFIX),
}


def load_prompt(prompt: str = "original", prompt_file: str | None = None) -> PromptTemplate:
    """A built-in prompt by name, or one read from a file: `.txt` is the user message (with `{text}`),
    `.json` holds {"user", "system"?, "reply_prefix"?, "json_mode"?}. The file's stem names the version."""
    if prompt_file:
        p = Path(prompt_file)
        if not p.exists():
            raise FileNotFoundError(f"prompt_file {p} does not exist")
        if p.suffix == ".json":
            d = read_json(p)
            tpl = PromptTemplate(p.stem, d["user"], d.get("system", ""), d.get("reply_prefix", ""),
                                 bool(d.get("json_mode", False)))
        else:
            tpl = PromptTemplate(p.stem, p.read_text(encoding="utf-8"))
        if "{text}" not in tpl.user:
            raise ValueError(f"prompt_file {p}: the user message has no {{text}} placeholder for the page")
        return tpl
    if prompt not in BUILTIN_PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}: expected one of {', '.join(BUILTIN_PROMPTS)} or a prompt_file")
    return BUILTIN_PROMPTS[prompt]


# ------------------------------------------------------------------------------------ configuration
# USD per million tokens (input, output); Groq's list prices. Unknown models cost 0 and say so.
DEFAULT_PRICES = {
    "llama-3.3-70b-versatile": (0.59, 0.79),
    "llama3-70b-8192": (0.59, 0.79),
    "llama-3.1-8b-instant": (0.05, 0.08),
    "llama3-8b-8192": (0.05, 0.08),
}


@dataclass
class GenerateConfig(StageConfig):
    PROFILE_DEFAULTS: ClassVar[dict] = {
        "demo": {"backend": "local", "prompt": "demo", "max_pages": 56, "window_chars": 600,
                 "max_input_chars": 700, "max_tokens": 80, "temperature": 0.0, "batch_size": 8,
                 "repetition_penalty": 1.15},
        "full": {"backend": "groq", "prompt": "original", "max_pages": 0, "max_input_chars": 12000,
                 "max_tokens": 1024, "temperature": 0.5},
    }
    PATH_FIELDS: ClassVar[dict] = {"pages_path": "pages", "triples_path": "triples",
                                   "instruction_json_path": "instruction_json", "dataset_dir": "dataset",
                                   "cache_dir": "cache"}

    backend: str = "groq"                  # "groq", "openai" (any OpenAI-compatible server) or "local"
    model: str | None = None               # None: the backend's default (DEFAULT_MODELS)
    base_url: str | None = None            # groq: None = GROQ_BASE_URL or Groq; openai: the server's /v1 URL
    max_pages: int = 0                     # pages sent (spread over papers round-robin); 0 = all
    prompt: str = "original"               # built-in prompt: original / json / demo
    prompt_file: str | None = None         # overrides `prompt`: .txt (user message) or .json
    json_mode: bool | None = None          # None: the prompt decides; True needs groq/openai
    max_input_chars: int = 12000           # page text cut to this many characters
    window_chars: int = 0                  # >0: pages cut into windows of about this many characters (small models)
    min_page_chars: int = 200              # shorter pages are skipped (counted)
    max_tokens: int = 1024                 # reply length limit
    temperature: float = 0.5
    workers: int | None = None             # concurrent requests; None: provider default
    rpm: float | None = None               # requests/minute; None: provider default, 0: unlimited
    tpm: float | None = None               # tokens/minute; None: provider default, 0: unlimited
    max_attempts: int = 6                  # per page, then it is recorded as failed and the run goes on
    timeout_s: float = 60.0
    batch_size: int = 8                    # local backend: prompts per generate call
    repetition_penalty: float = 1.0        # local backend
    threads: int = 0                       # local backend: torch CPU threads (0: torch's default)
    min_instruction_chars: int = 10
    min_output_chars: int = 3
    max_field_chars: int = 4000
    near_dup_rouge_l: float = 0.7          # instructions this similar (ROUGE-L F) to a kept one are dropped
    test_size: float = 0.2
    seed: int = 42
    prices: dict = field(default_factory=lambda: dict(DEFAULT_PRICES))   # model -> (USD/M in, USD/M out)
    pages_path: str | None = None
    triples_path: str | None = None
    instruction_json_path: str | None = None
    dataset_dir: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in DEFAULT_MODELS:
            raise ValueError(f"unknown backend {self.backend!r}: expected one of {', '.join(DEFAULT_MODELS)}")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size={self.test_size} must be between 0 and 1 (a share of the papers)")

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODELS.get(self.backend, "")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) / CACHE_FILE

    @property
    def report_path(self) -> Path:
        return Path(self.data_dir) / REPORT_FILE

    def template(self) -> PromptTemplate:
        return load_prompt(self.prompt, self.prompt_file)

    def use_json_mode(self) -> bool:
        return self.template().json_mode if self.json_mode is None else bool(self.json_mode)

    def gen_params(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "json_mode": self.use_json_mode()}


# ------------------------------------------------------------------------------------ pages and jobs
@dataclass
class PageJob:
    paper_id: str
    page: int
    chunk: int
    key: str
    messages: list[dict]


def split_windows(text: str, size: int) -> list[str]:
    """Cut text into windows of at most ~`size` characters at sentence ends (words when a sentence is longer);
    a short tail joins the window before it."""
    import re

    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    windows: list[str] = []
    cur = ""
    for sent in sentences:
        while len(sent) > size:                    # one overlong sentence: cut at a word boundary
            cut = sent.rfind(" ", 0, size)
            cut = cut if cut > 0 else size
            if cur:
                windows.append(cur)
                cur = ""
            windows.append(sent[:cut])
            sent = sent[cut:].strip()
        if cur and len(cur) + 1 + len(sent) > size:
            windows.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}".strip()
    if cur:
        if windows and len(cur) < size // 3:
            windows[-1] = f"{windows[-1]} {cur}"
        else:
            windows.append(cur)
    return windows


def window_pages(pages: list[dict], size: int) -> list[dict]:
    """Each page longer than `size` characters becomes several records; window w of a page gets
    chunk = w (or source chunk * 100 + w when stage 02 already chunked it)."""
    out = []
    for p in pages:
        text = p.get("text") or ""
        if len(text) <= size:
            out.append(p)
            continue
        base = int(p.get("chunk", 0) or 0)
        for w, piece in enumerate(split_windows(text, size)):
            out.append({**p, "text": piece, "chunk": base * 100 + w if base else w})
    return out


def select_pages(pages: list[dict], max_pages: int = 0, min_chars: int = 200,
                 window_chars: int = 0) -> tuple[list[dict], Counter]:
    """Usable pages, deduplicated by (paper_id, page, chunk), optionally cut into windows of `window_chars`,
    taken round-robin over papers when capped (so a small `max_pages` still covers many papers).
    Returns the pages (or windows) and what was skipped, by reason."""
    skipped: Counter = Counter()
    seen: set = set()
    by_paper: dict[str, list[dict]] = defaultdict(list)
    for p in pages:
        ident = (str(p.get("paper_id", "")), int(p.get("page", 0) or 0), int(p.get("chunk", 0) or 0))
        if not ident[0]:
            skipped["no_paper_id"] += 1
            continue
        if ident in seen:
            skipped["duplicate_page"] += 1
            continue
        seen.add(ident)
        if len((p.get("text") or "").strip()) < min_chars:
            skipped["page_too_short"] += 1
            continue
        by_paper[ident[0]].append(p)
    if window_chars:
        by_paper = {k: window_pages(v, window_chars) for k, v in by_paper.items()}
    queues = [sorted(v, key=lambda r: (int(r.get("page", 0) or 0), int(r.get("chunk", 0) or 0)))
              for _, v in sorted(by_paper.items())]
    out: list[dict] = []
    depth = 0
    while any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    if max_pages and len(out) > max_pages:
        skipped["over_max_pages"] += len(out) - max_pages
        out = out[:max_pages]
    return out, skipped


def cache_key(model: str, prompt_version: str, params: dict, messages: list[dict]) -> str:
    return sha256_text(model, prompt_version, json.dumps(params, sort_keys=True),
                       json.dumps(messages, sort_keys=True, ensure_ascii=False))


def make_jobs(pages: list[dict], cfg: GenerateConfig, template: PromptTemplate) -> list[PageJob]:
    params = cfg.gen_params()
    jobs = []
    for p in pages:
        text = " ".join((p.get("text") or "").split()) if cfg.backend == "local" else (p.get("text") or "").strip()
        messages = template.messages(text[: cfg.max_input_chars])
        jobs.append(PageJob(str(p["paper_id"]), int(p.get("page", 0) or 0), int(p.get("chunk", 0) or 0),
                            cache_key(cfg.model_name, template.version, params, messages), messages))
    return jobs


def load_cache(path: str | Path) -> dict[str, dict]:
    """Cached replies by key (the first record of a key wins: a duplicate from a raced run is ignored)."""
    out: dict[str, dict] = {}
    for rec in read_jsonl(path):
        out.setdefault(rec["key"], rec)
    return out


# ------------------------------------------------------------------------------------ the run
@dataclass
class GenerateResult:
    """What a run did and made (also written to data_dir/generate_report.json)."""

    backend: str = ""
    model: str = ""
    prompt_version: str = ""
    pages_in_file: int = 0
    pages_selected: int = 0
    pages_skipped: dict = field(default_factory=dict)
    pages_cached: int = 0
    calls: int = 0
    pages_failed: list = field(default_factory=list)      # [{paper_id, page, chunk, error}]
    replies: int = 0
    replies_without_triples: dict = field(default_factory=dict)   # reason -> count
    triples_parsed: int = 0
    triples_kept: int = 0
    drops: dict = field(default_factory=dict)             # reason -> count (parser + quality filters)
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

    def summary(self) -> str:
        fails = len(self.pages_failed)
        lines = [
            f"{self.backend}:{self.model}  prompt {self.prompt_version}",
            f"pages: {self.pages_selected} pages/windows selected from {self.pages_in_file} pages "
            f"({self.pages_cached} from cache, "
            f"{self.calls} called, {fails} failed); skipped {self.pages_skipped or 'none'}",
            f"triples: {self.triples_parsed} parsed -> {self.triples_kept} kept from {self.papers} papers "
            f"({self.triples_per_page:.2f} per page)",
            f"replies without triples: {self.replies_without_triples or 'none'}",
            f"dropped: {self.drops or 'none'}",
            f"tokens this run: {self.run_prompt_tokens} in / {self.run_completion_tokens} out, "
            f"~${self.run_cost_usd:.4f}; whole dataset ~${self.dataset_cost_usd:.4f}"
            + ("" if self.price_known else " (model not in the price table)"),
            f"wall {self.wall_s:.1f} s, {self.requests_per_min:.1f} requests/min, limiter waits {self.limiter_wait_s:.1f} s",
        ]
        if self.split:
            lines.append(f"split ({self.split.get('method')}, seed {self.split.get('seed')}): "
                         f"{self.split.get('n_train')} train / {self.split.get('n_test')} test rows, "
                         f"{self.split.get('train_papers')} / {self.split.get('test_papers')} papers")
        for f in self.pages_failed[:5]:
            lines.append(f"  failed {f['paper_id']} p{f['page']}: {f['error']}")
        return "\n".join(lines)


def _cost(prices: dict, model: str, tok_in: int, tok_out: int) -> tuple[float, bool]:
    price = prices.get(model)
    if not price:
        return 0.0, False
    return (tok_in * price[0] + tok_out * price[1]) / 1e6, True


def _parse(text: str, json_mode: bool):
    return parse_json_reply(text) if json_mode else parse_reply(text)


def trim_unfinished(text: str, keep_at_least: float = 0.5) -> str:
    """A field cut off by the token limit, trimmed back to its last full sentence (if that keeps most of it)."""
    import re

    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    if ends and ends[-1] >= keep_at_least * len(text):
        return text[: ends[-1]]
    return text


def build_backend(cfg: GenerateConfig, template: PromptTemplate):
    if cfg.backend == "local" and cfg.use_json_mode():
        raise ValueError("json_mode needs a backend with response_format support (groq or openai), not local")
    if cfg.backend == "local":
        return make_backend("local", cfg.model_name, data_dir=cfg.data_dir, batch_size=cfg.batch_size,
                            reply_prefix=template.reply_prefix, repetition_penalty=cfg.repetition_penalty,
                            threads=cfg.threads or None)
    backend = make_backend(cfg.backend, cfg.model_name, cfg.base_url, timeout_s=cfg.timeout_s)
    if cfg.use_json_mode() and not backend.supports_json_mode:
        raise ValueError(f"json_mode needs a backend with response_format support, not {cfg.backend}")
    return backend


def make_limiter(cfg: GenerateConfig) -> RateLimiter:
    limits = PROVIDER_LIMITS.get(cfg.backend, {})
    rpm = limits.get("rpm", 0) if cfg.rpm is None else cfg.rpm
    tpm = limits.get("tpm", 0) if cfg.tpm is None else cfg.tpm
    return RateLimiter(rpm=rpm, tpm=tpm, rpm_from_headers=cfg.backend == "openai")


def call_pending(cfg: GenerateConfig, jobs: list[PageJob], cached: dict[str, dict], result: GenerateResult,
                 template: PromptTemplate) -> None:
    """Call the LLM for every job not in the cache, appending each reply to the cache as it arrives."""
    from tqdm.auto import tqdm

    pending: dict[str, list[PageJob]] = defaultdict(list)
    for j in jobs:
        if j.key not in cached:
            pending[j.key].append(j)
    result.pages_cached = sum(1 for j in jobs if j.key in cached)
    if not pending:
        return
    backend = build_backend(cfg, template)
    limiter = make_limiter(cfg)
    workers = cfg.workers or PROVIDER_LIMITS.get(cfg.backend, {}).get("workers", 4)
    params = cfg.gen_params()
    json_mode = params["json_mode"]
    t0 = time.monotonic()
    counts = Counter()
    bar = tqdm(total=len(pending), desc=f"generate ({cfg.backend}:{cfg.model_name})", unit="page")
    try:
        for key, res in iter_completions(backend, ((k, js[0].messages) for k, js in pending.items()),
                                         workers=workers, limiter=limiter,
                                         policy=RetryPolicy(max_attempts=cfg.max_attempts), **params):
            first = pending[key][0]
            if isinstance(res, LLMError):
                counts["failed"] += 1
                for j in pending[key]:
                    result.pages_failed.append({"paper_id": j.paper_id, "page": j.page, "chunk": j.chunk,
                                                "error": res.describe(), "attempts": res.attempts})
            else:
                append_jsonl(cfg.cache_path, [{
                    "key": key, "paper_id": first.paper_id, "page": first.page, "chunk": first.chunk,
                    "backend": cfg.backend, "model": cfg.model_name, "prompt_version": template.version,
                    "params": params, "reply": res.text, "prompt_tokens": res.prompt_tokens,
                    "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
                    "latency_s": round(res.latency_s, 3), "attempts": res.attempts,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}])
                counts["ok"] += 1
                counts["triples"] += len(_parse(res.text, json_mode).triples)
                counts["tok_in"] += res.prompt_tokens
                counts["tok_out"] += res.completion_tokens
            result.calls += 1
            bar.update(1)
            bar.set_postfix(ok=counts["ok"], triples=counts["triples"], failed=counts["failed"],
                            tok_in=counts["tok_in"], tok_out=counts["tok_out"], refresh=False)
    finally:
        bar.close()
        elapsed = time.monotonic() - t0
        result.run_prompt_tokens, result.run_completion_tokens = counts["tok_in"], counts["tok_out"]
        result.requests_per_min = result.calls / elapsed * 60 if elapsed > 0 else 0.0
        result.limiter_wait_s = limiter.waited_s


def build_triples(cfg: GenerateConfig, jobs: list[PageJob], cached: dict[str, dict],
                  result: GenerateResult) -> list[dict]:
    """Parse and filter every cached reply of the selected pages, in page order (deterministic)."""
    qf = QualityFilter(min_instruction_chars=cfg.min_instruction_chars, min_output_chars=cfg.min_output_chars,
                       max_instruction_chars=cfg.max_field_chars, max_input_chars=cfg.max_field_chars,
                       max_output_chars=cfg.max_field_chars, near_dup_rouge_l=cfg.near_dup_rouge_l)
    no_triples: Counter = Counter()
    drops: Counter = Counter()
    out: list[dict] = []
    used_keys: set = set()
    for j in jobs:
        rec = cached.get(j.key)
        if rec is None:
            continue
        result.replies += 1
        if j.key not in used_keys:
            used_keys.add(j.key)
            result.dataset_prompt_tokens += int(rec.get("prompt_tokens") or 0)
            result.dataset_completion_tokens += int(rec.get("completion_tokens") or 0)
        parsed = _parse(rec["reply"], bool(rec.get("params", {}).get("json_mode")))
        if parsed.reason:
            no_triples[parsed.reason] += 1
        drops.update(parsed.dropped)
        result.triples_parsed += len(parsed.triples)
        if parsed.triples and rec.get("finish_reason") == "length":   # the reply was cut off mid-field
            last = parsed.triples[-1]
            last["output"] = trim_unfinished(last["output"])
        for t in parsed.triples:
            if qf.keep(t):
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


def write_outputs(cfg: GenerateConfig, triples: list[dict], result: GenerateResult) -> None:
    """triples.jsonl, the original-format JSON and dataset/ (split by paper), each replaced atomically."""
    from .splits import dump_original_format, make_split, save_split

    write_jsonl(cfg.triples_path, triples)
    dump_original_format(triples, cfg.instruction_json_path)
    if not triples:
        print("no triple survived: dataset/ is not written (see the drop reasons above)")
        return
    dd, info = make_split(triples, cfg.test_size, cfg.seed)
    info["source"] = str(cfg.triples_path)
    target = Path(cfg.dataset_dir)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_split(dd, info, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    result.split = info


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """The whole stage: select pages, call the LLM for uncached ones, rebuild the outputs from the cache."""
    t0 = time.monotonic()
    if not Path(cfg.pages_path).exists():
        raise FileNotFoundError(f"{cfg.pages_path} not found: run notebooks/02_parse.ipynb first (or point "
                                f"pages_path at a pages.jsonl)")
    template = cfg.template()
    all_pages = list(read_jsonl(cfg.pages_path))
    pages, skipped = select_pages(all_pages, cfg.max_pages, cfg.min_page_chars, cfg.window_chars)
    result = GenerateResult(backend=cfg.backend, model=cfg.model_name, prompt_version=template.version,
                            pages_in_file=len(all_pages), pages_selected=len(pages), pages_skipped=dict(skipped))
    jobs = make_jobs(pages, cfg, template)
    cached = load_cache(cfg.cache_path)
    call_pending(cfg, jobs, cached, result, template)
    cached = load_cache(cfg.cache_path)
    triples = build_triples(cfg, jobs, cached, result)
    result.run_cost_usd, result.price_known = _cost(cfg.prices, cfg.model_name, result.run_prompt_tokens,
                                                    result.run_completion_tokens)
    result.dataset_cost_usd, _ = _cost(cfg.prices, cfg.model_name, result.dataset_prompt_tokens,
                                       result.dataset_completion_tokens)
    write_outputs(cfg, triples, result)
    result.wall_s = time.monotonic() - t0
    write_json(cfg.report_path, asdict(result))
    return result


# ------------------------------------------------------------------------------------ notebook helpers
def load_triples(cfg: GenerateConfig) -> list[dict]:
    return list(read_jsonl(cfg.triples_path))


def show_examples(cfg: GenerateConfig, n: int = 3, seed: int = 0, width: int = 300) -> None:
    """Print `n` random kept triples (fields cut to `width` characters)."""
    import random

    rows = load_triples(cfg)
    for t in random.Random(seed).sample(rows, min(n, len(rows))):
        cut = lambda s: s if len(s) <= width else s[:width] + "…"  # noqa: E731
        print(f"--- {t['paper_id']} p{t['page']}\nInstruction: {cut(t['instruction'])}\n"
              f"Input: {cut(t['input'])}\nOutput: {cut(t['output'])}\n")


def plot_drop_reasons(result: GenerateResult, path: str | Path | None = None):
    from .plots import bar_counts

    counts = {**{f"reply: {k}": v for k, v in result.replies_without_triples.items()},
              **{f"triple: {k}": v for k, v in result.drops.items()}}
    return bar_counts(counts or {"nothing dropped": 0}, "Replies without triples and dropped triples", path)


def plot_field_lengths(cfg: GenerateConfig, path_prefix: str | Path | None = None) -> list:
    """One histogram of character lengths per field of the kept triples."""
    from .plots import histogram

    rows = load_triples(cfg)
    figs = []
    for f in ("instruction", "input", "output"):
        path = f"{path_prefix}_{f}.png" if path_prefix else None
        figs.append(histogram([len(r[f]) for r in rows], f"{f} length ({len(rows)} triples)", "characters",
                              path=path))
    return figs


__all__ = ["GenerateConfig", "GenerateResult", "PromptTemplate", "BUILTIN_PROMPTS", "load_prompt", "run_generate",
           "select_pages", "make_jobs", "load_cache", "build_triples", "show_examples", "plot_drop_reasons",
           "plot_field_lengths", "ORIGINAL_PROMPT", "DEFAULT_PRICES"]
