"""Stage 03 · generate: pages.jsonl -> LLM replies (cached) -> triples.jsonl, the original-format JSON, dataset/.

    cfg = GenerateConfig.from_params(profile="demo", data_dir="data")
    result = run(cfg)            # GenerateResult: .summary(), .table() (one row per page)

Modules: config (GenerateConfig), prompts, jobs (pages, windows, cache keys, the cache), calls (the LLM,
through nbutils.llm; one sending path for generation and the judge), build (replies -> scored, filtered
triples), grounding (a no-LLM score of each Output against its page), judge (an LLM's verdict per triple:
support, clarity, reasons), result, stage (run, the outputs), plots (incl. score histograms, the judge's cost,
the dropped triples' table).
"""
from .build import trim_unfinished
from .config import DEFAULT_PRICES, GenerateConfig
from .grounding import Grounder, grounding_score
from .jobs import load_cache, make_jobs, select_pages
from .judge import parse_verdicts, run_judge
from .plots import (
                    dropped_table,
                    judge_cost,
                    load_dropped,
                    load_triples,
                    plot_drop_reasons,
                    plot_field_lengths,
                    plot_scores,
                    show_examples,
)
from .prompts import BUILTIN_PROMPTS, ORIGINAL_PROMPT, PromptTemplate, load_prompt
from .result import GenerateResult
from .stage import run

__all__ = ["GenerateConfig", "GenerateResult", "run", "PromptTemplate", "BUILTIN_PROMPTS", "ORIGINAL_PROMPT",
           "DEFAULT_PRICES", "load_prompt", "select_pages", "make_jobs", "load_cache", "trim_unfinished",
           "load_triples", "show_examples", "plot_drop_reasons", "plot_field_lengths", "plot_scores", "judge_cost",
           "dropped_table", "load_dropped", "Grounder", "grounding_score", "run_judge", "parse_verdicts"]
