"""Stage 03: pages -> instruction/input/output triples with an LLM -> triples.jsonl, the original-format
JSON and the frozen split dataset/.

Every parsed triple gets a grounding score (grounding.py, no LLM) and, with `judge` on, the judge's verdict
(judge.py: support by the page and instruction clarity, 1-5, with reasons); the score thresholds and then the
quality filters drop triples, each dropped one written with its reason to triples_dropped.jsonl.

Every raw reply is appended (fsync'd) to `data_dir/cache/generate_replies.jsonl` before it is parsed, keyed
by sha256(backend model + prompt version + generation parameters + rendered prompt). Outputs are rebuilt
from that cache on every run, so a rerun makes no calls for cached pages, and a run killed at any moment
loses only requests in flight and never duplicates a row.

The three outputs move together: a run that keeps at least one triple replaces all of them (triples.jsonl, the
JSON, then dataset/ through an atomic folder swap); a run that keeps none (every page failed, e.g. a
mistyped model name) leaves all of them as they were and says so, so they never disagree.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..io import atomic_folder, check_replaceable, write_json, write_jsonl
from ..lock import locked_stage
from .build import add_grounding, filter_triples, parse_pages
from .calls import call_pending
from .config import GenerateConfig
from .jobs import load_cache, load_pages, make_jobs, select_pages
from .judge import run_judge
from .result import GenerateResult, batch_saving_usd, cost_usd


def write_outputs(cfg: GenerateConfig, triples: list[dict], result: GenerateResult) -> None:
    """triples.jsonl, the original-format JSON and dataset/ (split by paper), each replaced atomically, the
    source first: a run killed in between leaves a split older than its source, which the split's record
    of its source shows (and the next run rebuilds all three from the cache anyway)."""
    from ..splits import SPLIT_INFO, dump_original_format, make_split, save_split

    write_jsonl(cfg.triples_path, triples)
    dump_original_format(triples, cfg.instruction_json_path)
    dd, info = make_split(triples, cfg.test_size, cfg.seed)
    info["source"] = str(cfg.triples_path)
    with atomic_folder(cfg.dataset_dir, legacy=(SPLIT_INFO,)) as tmp:
        save_split(dd, info, tmp)
    result.split, result.outputs_replaced = info, True


def keep_outputs_note(cfg: GenerateConfig, result: GenerateResult) -> str:
    """Why nothing was written, and what is still there."""
    if result.pages_failed:
        why = (f"{len(result.pages_failed)} of {result.pages_selected} pages failed "
               f"(first: {result.pages_failed[0]['error']})")
    else:
        why = "no reply gave a triple that passed the filters (see the reasons above)"
    present = [Path(p).name for p in (cfg.triples_path, cfg.instruction_json_path, cfg.dataset_dir)
               if Path(p).exists()]
    kept = (f"{', '.join(present)} left as they were (from the last run that kept triples)" if present
            else "nothing written")
    return f"no triple kept this run: {why}; {kept}. Fix the cause and rerun: cached replies are reused."


@locked_stage("03_generate")
def run(cfg: GenerateConfig) -> GenerateResult:
    """The whole stage: select pages, call the LLM for uncached ones, rebuild the outputs from the cache."""
    t0 = time.monotonic()
    if not Path(cfg.pages_path).exists():
        raise FileNotFoundError(f"{cfg.pages_path} not found: run notebooks/02_parse.ipynb first (or point "
                                f"pages_path at a pages.jsonl)")
    check_replaceable(cfg.dataset_dir, legacy=("split_info.json",), param="dataset_dir")  # before any paid call
    template = cfg.template()
    bad: list[str] = []
    all_pages = load_pages(cfg.pages_path, bad)
    pages, skipped = select_pages(all_pages, cfg.max_pages, cfg.min_page_chars, cfg.window_chars)
    if bad:
        skipped["bad_record"] = len(bad)
    result = GenerateResult(backend=cfg.backend, model=cfg.model_name, prompt_version=template.version,
                            pages_in_file=len(all_pages), pages_selected=len(pages), pages_skipped=dict(skipped))
    jobs = make_jobs(pages, cfg, template)
    before = load_cache(cfg.cache_path)
    call_pending(cfg, jobs, before, result, template)
    cached = load_cache(cfg.cache_path)
    candidates = parse_pages(cfg, jobs, cached, result, frozenset(cached.keys() - before.keys()))
    add_grounding(cfg, jobs, candidates, result)
    result.judge = run_judge(cfg, jobs, candidates)
    triples, dropped = filter_triples(cfg, candidates, result)
    result.run_cost_usd, result.price_known = cost_usd(cfg.prices, cfg.model_name, result.run_prompt_tokens,
                                                       result.run_completion_tokens)
    if result.batch:                       # this run's requests went through the batch API: its price
        result.run_cost_usd *= 1 - result.batch["discount"]
    result.dataset_cost_usd, _ = cost_usd(cfg.prices, cfg.model_name, result.dataset_prompt_tokens,
                                          result.dataset_completion_tokens)
    result.dataset_cost_usd -= batch_saving_usd(cfg.prices, cfg.model_name, {j.key: cached.get(j.key) for j in jobs}
                                                .values(), cfg.batch_discount)
    if triples:
        write_outputs(cfg, triples, result)
        write_jsonl(cfg.dropped_path, dropped)
    else:
        result.note = keep_outputs_note(cfg, result)
        print(result.note)
    result.wall_s = time.monotonic() - t0
    write_json(cfg.report_path, asdict(result))
    return result
