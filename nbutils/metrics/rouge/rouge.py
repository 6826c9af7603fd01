"""ROUGE-1/2/L/Lsum as an `evaluate` metric module that ships with the project, so that
`evaluate.load(<this folder>)` works offline (the hub's "rouge" needs the internet).

Same inputs, options and outputs as the hub's `evaluate-metric/rouge` (Apache-2.0), computed by Google's
`rouge_score` package: F-measures, per example (`use_aggregator=False`) or averaged.
"""
from __future__ import annotations

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W04-1013",
}
"""

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) compares generated text against references by
n-gram overlap (rouge1, rouge2) and longest common subsequence (rougeL; rougeLsum splits on newlines).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts (or a list of lists: the best-scoring reference counts).
    rouge_types: subset of ["rouge1", "rouge2", "rougeL", "rougeLsum"] (default: all four).
    use_aggregator: True returns the plain mean F-measure per type (deterministic); False a list with one
        value per example.
    use_stemmer: Porter-stem words before matching (default False, as the hub metric).
    tokenizer: optional callable splitting a string into tokens (default: rouge_score's lowercase
        alphanumeric tokenizer, which drops non-ASCII letters).
Returns:
    dict rouge_type -> F-measure (float) or list of per-example F-measures.
Examples:
    >>> rouge = evaluate.load("nbutils/metrics/rouge")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat on the mat"])["rouge1"]
    0.6666666666666666
"""


class _CallableTokenizer:
    """Adapts a plain callable to rouge_score's Tokenizer interface."""

    def __init__(self, fn):
        self.fn = fn

    def tokenize(self, text):
        return self.fn(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False,
                 tokenizer=None):
        rouge_types = list(rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"])
        tok = _CallableTokenizer(tokenizer) if tokenizer is not None else None
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer, tokenizer=tok)
        multi_ref = bool(references) and isinstance(references[0], list)
        per_example: dict[str, list[float]] = {t: [] for t in rouge_types}
        for ref, pred in zip(references, predictions):
            score = scorer.score_multi(ref, pred) if multi_ref else scorer.score(ref, pred)
            for t in rouge_types:
                per_example[t].append(score[t].fmeasure)
        if use_aggregator:  # the plain mean: deterministic (the hub metric's bootstrap median is not seeded)
            return {t: (sum(v) / len(v) if v else 0.0) for t, v in per_example.items()}
        return per_example
