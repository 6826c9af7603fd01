"""Stage 05: base vs tuned on the held-out split, deterministic, with paired-bootstrap error bars.

One copy of the base model is loaded and the LoRA adapter attached to it; the base is scored with the adapter
disabled (`with model.disable_adapter():`), the tuned model with it enabled. Generation is greedy by default,
batched with left padding over length-sorted prompts, and cached per example so a killed run resumes.
Metrics: ROUGE-1/2/L, corpus BLEU, the reference answer's mean token NLL / perplexity under each model, answer
lengths; every one with a paired bootstrap 95% CI of tuned - base. `run(cfg)` writes reports/ and returns an
EvaluateResult.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from nbutils.decoding import EngineSettings, GenerationEngine
from nbutils.io import sha256_text
from nbutils.lock import locked_stage
from nbutils.templates import build_prompt

from .answers import GenParams, PredictionCache, encode_prompts, generate_answers
from .bootstrap import paired_bootstrap
from .config import EvaluateConfig
from .data import load_eval_examples, read_train_log, resolve_template
from .harness import prepare_harness, run_harness
from .judge import judge_metrics, judge_pairwise
from .metrics import METRIC_LABELS, ROUGE_TYPES, bleu_stats, build_specs, rouge_scores, sentence_bleu, word_count
from .model import check_adapter, load_model_with_adapter, model_fingerprint
from .nll import reference_nll
from .report import write_reports
from .result import EvaluateResult


def run_key(cfg: EvaluateConfig, fingerprint: dict, variant: str, template: str, gen: GenParams, four_bit: bool,
            engine_key: str = "") -> str:
    """Names one prediction cache: the weights, adapter on/off, template, generation and prompt settings, and the
    engine settings that change answers (none for the plain path, so older caches stay valid)."""
    return sha256_text(json.dumps(fingerprint, sort_keys=True), variant, template, gen.key(),
                       f"4bit={four_bit}", f"max_prompt_tokens={cfg.max_prompt_tokens}",
                       *([engine_key] if engine_key else []))[:20]


def answer_and_score(cfg: EvaluateConfig, model, tok, prompts: list[str], refs: list[str],
                     cache_key) -> tuple[dict, dict, dict]:
    """Per variant (base = adapter off, tuned = adapter on): generated answers and reference NLLs, through one
    engine session for both passes (nbutils.decoding); and what the engine ran."""
    gen = cfg.gen_params()
    nll_bs = cfg.nll_batch_size or cfg.batch_size
    answers, nll = {}, {}
    lengths = [len(x) for x in encode_prompts(tok, prompts, cfg.max_prompt_tokens)[0]]
    engine = GenerationEngine(model, tok, EngineSettings(path=cfg.engine))
    with engine.session(gen, lengths, cfg.batch_size) as session:
        for variant in ("base", "tuned"):
            cache_path = Path(cfg.cache_dir) / "eval" / f"{variant}-{cache_key(variant, gen, session.key())}.jsonl"
            cache = PredictionCache(cache_path if cfg.resume else None)
            if not cfg.resume:
                cache_path.unlink(missing_ok=True)
                cache.path = cache_path
            with session.adapter(variant == "tuned"):
                answers[variant] = generate_answers(model, tok, prompts, gen, cfg.batch_size, cfg.max_prompt_tokens,
                                                    cache, desc=f"{variant} answers", session=session)
                nll[variant] = reference_nll(model, tok, prompts, refs, nll_bs, cfg.max_prompt_tokens,
                                             cfg.max_reference_tokens, desc=f"{variant} reference NLL")
        return answers, nll, session.describe()


def judge(cfg: EvaluateConfig, rows: list[dict], refs: list[str], answers: dict) -> list[dict] | None:
    """The optional pairwise LLM judge (cfg.judge_backend), on the first judge_max_examples rows."""
    if not cfg.judge_backend:
        return None
    from nbutils.llm import make_backend

    backend = make_backend(cfg.judge_backend, cfg.judge_model, cfg.judge_base_url, data_dir=cfg.data_dir)
    k = cfg.judge_max_examples or len(rows)
    return judge_pairwise(rows[:k], refs[:k], [a["text"] for a in answers["base"][:k]],
                          [a["text"] for a in answers["tuned"][:k]], backend,
                          Path(cfg.cache_dir) / "eval" / "judge.jsonl")


def score(cfg: EvaluateConfig, rows, prompts, refs, answers: dict, nll: dict, template: str,
          judged: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Metrics with bootstrap CIs (metrics.json's content) and the per-example records, from finished answers."""
    texts = {v: [a["text"] for a in answers[v]] for v in ("base", "tuned")}
    rouge = {v: rouge_scores(texts[v], refs) for v in texts}
    bleu = {v: bleu_stats(texts[v], refs) for v in texts}
    sbleu = {v: sentence_bleu(texts[v], refs) for v in texts}
    metrics = paired_bootstrap(build_specs(answers, nll, rouge, bleu), cfg.n_bootstrap, cfg.seed, cfg.confidence)
    if judged:
        metrics.update(judge_metrics(judged, cfg.n_bootstrap, cfg.seed, cfg.confidence))
    per_example = []
    for i, r in enumerate(rows):
        scores = {}
        for v in ("base", "tuned"):
            n_tok = nll[v][1][i]
            scores[v] = {**{t: rouge[v][t][i] for t in ROUGE_TYPES}, "bleu": sbleu[v][i],
                         "ref_nll": float(nll[v][0][i] / n_tok) if n_tok else None,
                         "answer_words": word_count(texts[v][i]), "new_tokens": answers[v][i]["n_new_tokens"],
                         "stopped": answers[v][i]["stopped"]}
        if judged and i < len(judged):
            scores["judge"] = judged[i]
        per_example.append({"id": r["id"], "paper_id": r.get("paper_id", ""), "instruction": r["instruction"],
                            "input": r["input"], "prompt": prompts[i], "reference": refs[i], "base": texts["base"][i],
                            "tuned": texts["tuned"][i], "scores": scores,
                            "delta_rougeL": scores["tuned"]["rougeL"] - scores["base"]["rougeL"]})
    result = {
        "n_examples": len(rows), "template": template, "split": cfg.split,
        "reference_words_mean": float(np.mean([word_count(x) for x in refs])),
        "generation": {"do_sample": cfg.do_sample, "max_new_tokens": cfg.max_new_tokens,
                       **({"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
                          if cfg.do_sample else {})},
        "bootstrap": {"n": cfg.n_bootstrap, "seed": cfg.seed, "confidence": cfg.confidence, "paired": True},
        "metrics": metrics, "labels": METRIC_LABELS,
        "config": cfg.to_dict(),
    }
    return result, per_example


@locked_stage("05_evaluate")
def run(cfg: EvaluateConfig, model=None, tok=None, verbose: bool = True) -> EvaluateResult:
    """Generate and score base and tuned answers; write reports/ (metrics.json, predictions.jsonl, plots,
    report.md). `model`/`tok` may be passed in (a PeftModel, as the notebook does) to skip loading."""
    from nbutils.models import pick_device

    t0 = time.time()
    if model is None:
        check_adapter(cfg.adapter_dir)
    task_manager = prepare_harness(cfg)  # lm-eval there and the tasks known, before any paid work
    rows = load_eval_examples(cfg, verbose)
    template = resolve_template(cfg)
    if model is None or tok is None:
        model, tok = load_model_with_adapter(cfg, verbose)
    prompts = [build_prompt(r["instruction"], r["input"], template, tok) for r in rows]
    refs = [r["output"].strip() for r in rows]
    fp = model_fingerprint(cfg)
    four_bit = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model, "is_loaded_in_4bit", False))
    _, n_cut = encode_prompts(tok, prompts, cfg.max_prompt_tokens)
    if n_cut:
        print(f"note: {n_cut} prompt(s) longer than max_prompt_tokens={cfg.max_prompt_tokens} keep their last tokens")
    t1 = time.time()
    answers, nll, engine = answer_and_score(cfg, model, tok, prompts, refs, lambda variant, gen, engine_key:
                                            run_key(cfg, fp, variant, template, gen, four_bit, engine_key))
    t_gen = time.time() - t1
    result, per_example = score(cfg, rows, prompts, refs, answers, nll, template, judge(cfg, rows, refs, answers))
    result["generation"]["engine"] = engine
    harness = run_harness(cfg, model, tok, template, sha256_text(json.dumps(fp, sort_keys=True), template,
                                                                  f"4bit={four_bit}")[:20], task_manager, verbose)
    if harness:
        result["harness"] = harness
    result["runtime"] = {"device": pick_device(), "base_4bit": four_bit, "seconds_total": round(time.time() - t0, 1),
                         "seconds_generate_and_nll": round(t_gen, 1),
                         "seconds_harness": harness["seconds"] if harness else 0.0,
                         "generated_tokens": int(sum(a["n_new_tokens"] for v in answers.values() for a in v)),
                         "prompts_truncated": n_cut, "fingerprint": fp}
    if cfg.log_to_tracker:
        from .tracking import log_to_trackers

        train_log = read_train_log(cfg.adapter_dir)
        result["tracking"] = log_to_trackers(train_log.get("tracking"), result, int(train_log.get("global_step") or 0),
                                             verbose)
    write_reports(cfg.reports_dir, result, per_example, cfg.n_show)
    return EvaluateResult(report=result, reports_dir=str(cfg.reports_dir))
