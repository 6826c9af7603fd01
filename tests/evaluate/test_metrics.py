"""nbutils.evaluate.metrics against hand-computed values: the shipped ROUGE module offline, stemming, corpus
BLEU from summed statistics."""
from __future__ import annotations

import pytest

from nbutils import evaluate as ev


# ---------------------------------------------------------------- metrics by hand
def test_shipped_rouge_module_loads_offline_and_matches_hand_computed_values():
    import evaluate as hf_evaluate

    rouge = hf_evaluate.load(str(ev.ROUGE_METRIC_DIR))
    out = rouge.compute(predictions=["the cat sat", "a b c", "x y"], references=["the cat sat on the mat", "a b c", "p q"],
                        use_aggregator=False)
    # "the cat sat" vs "the cat sat on the mat": unigrams P=3/3 R=3/6 -> F=2/3; bigrams P=2/2 R=2/5 -> F=4/7;
    # LCS = 3 -> same as ROUGE-1.
    assert out["rouge1"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert out["rouge2"] == pytest.approx([4 / 7, 1.0, 0.0])
    assert out["rougeL"] == pytest.approx([2 / 3, 1.0, 0.0])
    agg = rouge.compute(predictions=["the cat sat", "a b c"], references=["the cat sat on the mat", "a b c"])
    assert agg["rouge1"] == pytest.approx((2 / 3 + 1) / 2)


def test_rouge_scores_uses_stemming():
    s = ev.rouge_scores(["models learned"], ["model learning"])
    assert s["rouge1"] == pytest.approx([1.0])


def test_corpus_bleu_from_summed_stats_equals_sacrebleu():
    import sacrebleu

    hyps = ["the cat is on the mat", "there is a dog in the garden today", "completely unrelated words"]
    refs = ["the cat sat on the mat", "a dog is in the garden today", "nothing in common here"]
    stats = ev.bleu_stats(hyps, refs)
    assert stats.shape == (3, 10)
    ours = ev.corpus_bleu_from_stats(stats.sum(0))[0]
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert ev.corpus_bleu_from_stats(ev.bleu_stats(["a b c d e"], ["a b c d e"]).sum(0))[0] == pytest.approx(100.0)
    # a subset's summed stats give that subset's corpus BLEU (what the bootstrap relies on)
    assert ev.corpus_bleu_from_stats(stats[:2].sum(0))[0] == pytest.approx(
        sacrebleu.corpus_bleu(hyps[:2], [refs[:2]]).score)
