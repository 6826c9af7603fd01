"""The scores: ROUGE-1/2/L (through `evaluate`, with the metric module shipped in nbutils/metrics/rouge, offline),
corpus BLEU (sacrebleu) from per-example sufficient statistics, answer lengths; and each as a bootstrap spec."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bootstrap import MetricSpec, mean_spec, ratio_spec

ROUGE_METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "rouge"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
METRIC_LABELS = {"rouge1": "ROUGE-1 F1", "rouge2": "ROUGE-2 F1", "rougeL": "ROUGE-L F1", "bleu": "BLEU (corpus)",
                 "ref_nll": "reference NLL (nats/token)", "ref_perplexity": "reference perplexity",
                 "answer_words": "answer length (words)", "hit_max_new_tokens": "share cut at max_new_tokens",
                 "judge_preference": "LLM judge: share preferred (both orders)"}


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1/2/L F1 via `evaluate` and the metric module shipped in nbutils/metrics/rouge."""
    import evaluate as hf_evaluate

    rouge = hf_evaluate.load(str(ROUGE_METRIC_DIR))
    out = rouge.compute(predictions=list(predictions), references=list(references), rouge_types=list(ROUGE_TYPES),
                        use_aggregator=False, use_stemmer=True)
    return {t: [float(x) for x in out[t]] for t in ROUGE_TYPES}


def bleu_stats(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example BLEU sufficient statistics (n, 10): 4 n-gram matches, 4 totals, hyp length, ref length.
    Summed over any subset they give that subset's corpus BLEU exactly (what the bootstrap needs)."""
    from sacrebleu.metrics.bleu import BLEU

    bleu = BLEU()
    rows = []
    for h, r in zip(predictions, references):
        s = bleu.corpus_score([h], [[r]])
        rows.append(list(s.counts) + list(s.totals) + [s.sys_len, s.ref_len])
    return np.asarray(rows, dtype=float).reshape(-1, 10)


def corpus_bleu_from_stats(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU (sacrebleu's defaults: exp smoothing, 4-grams) for each row of summed statistics (B, 10)."""
    from sacrebleu.metrics.bleu import BLEU

    sums = np.atleast_2d(sums)
    return np.array([BLEU.compute_bleu([int(x) for x in s[:4]], [int(x) for x in s[4:8]], int(s[8]), int(s[9]),
                                       smooth_method="exp").score for s in sums])


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    import sacrebleu

    return [float(sacrebleu.sentence_bleu(h, [r]).score) for h, r in zip(predictions, references)]


def word_count(text: str) -> int:
    return len(text.split())


def build_specs(answers: dict, nll: dict, rouge: dict, bleu: dict) -> list[MetricSpec]:
    """Every metric of the report as a bootstrap spec (base vs tuned, per-example statistics)."""
    specs = [mean_spec(t, rouge["base"][t], rouge["tuned"][t]) for t in ROUGE_TYPES]
    specs.append(MetricSpec("bleu", bleu["base"], bleu["tuned"], corpus_bleu_from_stats))
    (bn, bt), (tn, tt) = nll["base"], nll["tuned"]
    specs.append(ratio_spec("ref_nll", bn, bt, tn, tt))
    specs.append(ratio_spec("ref_perplexity", bn, bt, tn, tt, transform=np.exp))
    specs.append(mean_spec("answer_words", [word_count(a["text"]) for a in answers["base"]],
                           [word_count(a["text"]) for a in answers["tuned"]], higher_is_better=None))
    specs.append(mean_spec("hit_max_new_tokens", [not a["stopped"] for a in answers["base"]],
                           [not a["stopped"] for a in answers["tuned"]], higher_is_better=False))
    return specs
