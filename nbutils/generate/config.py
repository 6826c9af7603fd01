"""What 03_generate can be told: one field per knob, its `full` default and help; the demo profile's overrides."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import StageConfig, option
from ..llm import DEFAULT_MODELS
from .prompts import BUILTIN_PROMPTS, PromptTemplate, load_prompt

CACHE_FILE = "generate_replies.jsonl"
JUDGE_CACHE_FILE = "judge_verdicts.jsonl"
BATCH_DIR = "batches"          # under cache_dir: one <stage>-<name>.json per batch submitted (+ its input JSONL)
JUDGE_MODES = ("page", "triple")
GROUNDING_UNITS = ("idf", "unigram", "bigram", "mix")
BACKENDS = tuple(DEFAULT_MODELS)

# USD per million tokens (input, output); Groq's list prices. Unknown models cost 0 and say so.
DEFAULT_PRICES = {
    "llama-3.3-70b-versatile": (0.59, 0.79),
    "llama3-70b-8192": (0.59, 0.79),
    "llama-3.1-8b-instant": (0.05, 0.08),
    "llama3-8b-8192": (0.05, 0.08),
}


@dataclass
class GenerateConfig(StageConfig):
    """Everything 03_generate can be told; `None` paths default under data_dir (docs/pipeline.md names)."""

    PROFILE_OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "demo": {"backend": "local", "prompt": "demo", "max_pages": 56, "window_chars": 600,
                 "max_input_chars": 700, "max_tokens": 80, "temperature": 0.0, "repetition_penalty": 1.15,
                 # the judge runs end to end on the embedded 135M model, whose scores mean nothing: a few pages
                 # judged (speed), and nothing dropped on its scores (the demo keeps its data)
                 "judge_max_pages": 6, "judge_max_tokens": 48, "judge_max_input_chars": 700, "min_support": 0,
                 "min_clarity": 0},
        # the original prompt (full's too), one request after another, and no judge (the original had none)
        "original": {"workers": 1, "judge": False},
    }
    PATH_FIELDS: ClassVar[dict[str, str]] = {"pages_path": "pages", "triples_path": "triples",
                                             "instruction_json_path": "instruction_json", "dataset_dir": "dataset",
                                             "cache_dir": "cache"}
    INPUT_FIELDS: ClassVar[tuple] = ('pages_path', 'prompt_file')
    OUTPUT_FIELDS: ClassVar[tuple] = ('triples_path', 'instruction_json_path', 'dataset_dir', 'cache_dir')

    backend: str = option("groq", "groq, openai (any OpenAI-compatible server) or local (transformers)",
                          choices=BACKENDS)
    model: str | None = option(None, "None: the backend's default (llama-3.3-70b-versatile on groq, "
                                     "SmolLM2-135M-Instruct on local); openai needs one")
    base_url: str | None = option(None, "groq: None = $GROQ_BASE_URL or Groq; openai: the server's /v1 URL")
    max_pages: int = option(0, "pages (or windows) sent, spread round-robin over papers; 0 = all", ge=0)
    prompt: str = option("original", "built-in prompt", choices=tuple(BUILTIN_PROMPTS))
    prompt_file: str | None = option(None, "your own prompt, overrides `prompt`: .txt (with {text}) or .json")
    json_mode: bool | None = option(None, "ask for JSON and validate it; None: the prompt decides (groq/openai)")
    max_input_chars: int = option(12000, "page text cut to this many characters", ge=1)
    window_chars: int = option(0, ">0: pages cut into windows of about this many characters (small models)", ge=0)
    min_page_chars: int = option(200, "shorter pages are skipped (counted)", ge=0)
    max_tokens: int = option(1024, "reply length limit", ge=1)
    temperature: float = option(0.5, "sampling temperature (0: greedy)", ge=0)
    workers: int | None = option(None, "concurrent requests; None: the provider's default", ge=1)
    rpm: float | None = option(None, "requests/minute; None: the provider's default, 0: unlimited", ge=0)
    tpm: float | None = option(None, "tokens/minute; None: the provider's default, 0: unlimited", ge=0)
    max_attempts: int = option(6, "tries per page, then it is recorded as failed (retried next run)", ge=1)
    timeout_s: float = option(60.0, "total seconds one request may take (connect, wait and reply together)", gt=0)
    max_wait_s: float = option(120.0, "a longer Retry-After is not waited for: sending stops, rerun later", ge=0)
    batch_size: int = option(8, "local backend: prompts per generate call", ge=1)
    repetition_penalty: float = option(1.0, "local backend", gt=0)
    threads: int = option(0, "local backend: torch CPU threads (0: torch's default)", ge=0)
    batch: bool = option(False, "groq/openai: send generation and judge requests through the provider's batch API "
                                "(JSONL uploaded, ~half price, results within batch_window); batch ids are kept under "
                                "cache/batches, so a rerun resumes waiting instead of paying twice")
    batch_window: str = option("24h", "batch completion window asked for (OpenAI: 24h; Groq: 24h to 7d)")
    batch_poll_s: float = option(30.0, "first wait between batch status checks; it grows 1.5x a check, to 10 min", gt=0)
    batch_wait_s: float = option(0.0, "stop waiting for batches after this many seconds (their pages are recorded "
                                      "as pending, a rerun resumes the same batches); 0 = wait until they end", ge=0)
    batch_discount: float = option(0.5, "share off the list price for batch requests, used for the report's cost "
                                        "(OpenAI documents 50 %; Groq's docs said 25 %, later 50 %: set your "
                                        "provider's current figure)", ge=0, le=1)
    min_instruction_chars: int = option(10, "shorter instructions are dropped", ge=0)
    min_output_chars: int = option(3, "shorter outputs are dropped", ge=0)
    max_field_chars: int = option(4000, "longer fields are dropped", ge=1)
    near_dup_rouge_l: float = option(0.7, "instructions this similar (ROUGE-L F) to a kept one are dropped", ge=0, le=1)
    judge: bool = option(True, "an LLM judges every parsed triple (support by the page, instruction clarity, 1-5) "
                               "before the filters")
    judge_backend: str | None = option(None, "the judge's backend; None: the generator's", choices=BACKENDS)
    judge_model: str | None = option(None, "None: the generator's model on the same backend, else that backend's "
                                           "default")
    judge_base_url: str | None = option(None, "None: base_url when the judge uses the generator's backend")
    judge_mode: str = option("page", "page: one call judges all of a page's triples (the page is paid once); "
                                     "triple: one call per triple", choices=JUDGE_MODES)
    judge_max_pages: int = option(0, "pages whose triples are judged (the first ones); 0 = all; the rest stay "
                                     "unjudged (kept)", ge=0)
    judge_max_input_chars: int = option(12000, "page text shown to the judge cut to this many characters (said)", ge=1)
    judge_max_tokens: int = option(1024, "judge reply length limit", ge=1)
    min_support: int = option(3, "triples the judge scores below this support (1-5) are dropped; 0 = keep all",
                              ge=0, le=5)
    min_clarity: int = option(3, "triples the judge scores below this instruction clarity (1-5) are dropped; "
                                 "0 = keep all", ge=0, le=5)
    drop_unjudged: bool = option(False, "drop triples the judge did not judge (failed call, missing verdict); "
                                        "False: kept, their reason in judge_note")
    grounding_unit: str = option("idf", "grounding score unit: idf-weighted content words on the page (measured "
                                        "best), unigram, bigram or mix", choices=GROUNDING_UNITS)
    min_grounding: float = option(0.0, "triples whose grounding score (0-1, no LLM) is below this are dropped; "
                                       "0 = keep all", ge=0, le=1)
    test_size: float = option(0.2, "share of papers held out for the test split", gt=0, lt=1)
    seed: int = option(42, "split seed", ge=0)
    prices: dict = option(DEFAULT_PRICES, "model -> [USD per million input tokens, per million output tokens]")
    pages_path: str | None = option(None, "input (None: data_dir/pages.jsonl)")
    triples_path: str | None = option(None, "output (None: data_dir/triples.jsonl)")
    instruction_json_path: str | None = option(None, "output (None: data_dir/arxiv_instruction_dataset.json)")
    dataset_dir: str | None = option(None, "output split (None: data_dir/dataset)")
    cache_dir: str | None = option(None, "raw replies (None: data_dir/cache)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size={self.test_size} must be between 0 and 1 (a share of the papers)")
        for name in ("min_support", "min_clarity"):
            if not 0 <= getattr(self, name) <= 5:
                raise ValueError(f"{name}={getattr(self, name)} must be 0 (off) or a score 1-5")
        if self.batch and self.backend == "local" and not (self.judge and self.judge_backend_name != "local"):
            raise ValueError("batch=True needs backend (or judge_backend) groq or openai: the providers' batch "
                             "APIs; a local model has none")
        if not 0 <= self.batch_discount < 1:
            raise ValueError(f"batch_discount={self.batch_discount} must be a share of the price, 0 to <1")
        if self.judge and self.judge_backend_name == "openai" and not self.judge_model_name:
            raise ValueError("judge_model is needed when the judge runs on backend 'openai' (the name the server "
                             "serves); or judge=False")
        if not 0 <= self.min_grounding <= 1:
            raise ValueError(f"min_grounding={self.min_grounding} must be between 0 (off) and 1")

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODELS.get(self.backend, "")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) / CACHE_FILE

    @property
    def batch_dir(self) -> Path:
        return Path(self.cache_dir) / BATCH_DIR

    @property
    def judge_cache_path(self) -> Path:
        return Path(self.cache_dir) / JUDGE_CACHE_FILE

    @property
    def judge_backend_name(self) -> str:
        return self.judge_backend or self.backend

    @property
    def judge_model_name(self) -> str:
        if self.judge_model:
            return self.judge_model
        return self.model_name if self.judge_backend_name == self.backend else DEFAULT_MODELS.get(
            self.judge_backend_name, "")

    @property
    def judge_url(self) -> str | None:
        return self.judge_base_url or (self.base_url if self.judge_backend_name == self.backend else None)

    @property
    def dropped_path(self) -> Path:
        return self.paths.triples_dropped

    @property
    def report_path(self) -> Path:
        return self.paths.generate_report

    def template(self) -> PromptTemplate:
        return load_prompt(self.prompt, self.prompt_file)

    def use_json_mode(self) -> bool:
        return self.template().json_mode if self.json_mode is None else bool(self.json_mode)

    def request_params(self) -> dict:
        """The keyword arguments of every LLM request (part of each page's cache key)."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "json_mode": self.use_json_mode()}
