"""nbutils.evaluate.bootstrap: the paired bootstrap's intervals (a true difference, no difference, a
token-weighted ratio)."""
from __future__ import annotations

import numpy as np
import pytest

from nbutils import evaluate as ev


# ---------------------------------------------------------------- bootstrap
def test_paired_bootstrap_ci_contains_true_difference_and_is_not_degenerate():
    rng = np.random.default_rng(0)
    n, true_delta = 400, 0.05
    base = rng.uniform(0.1, 0.6, n)                     # examples differ a lot in difficulty...
    tuned = base + true_delta + rng.normal(0, 0.05, n)  # ...the paired difference is what matters
    out = ev.paired_bootstrap([ev.mean_spec("score", base, tuned)], n_boot=2000, seed=1)["score"]
    lo, hi = out["delta_ci"]
    assert lo < true_delta < hi
    assert 0.002 < hi - lo < 0.03                       # paired: far narrower than the per-model spread
    assert out["delta"] == pytest.approx(float(np.mean(tuned - base)))
    assert out["p_not_better"] < 0.01
    b_lo, b_hi = out["base_ci"]
    assert b_lo < base.mean() < b_hi and b_hi - b_lo > hi - lo
    again = ev.paired_bootstrap([ev.mean_spec("score", base, tuned)], n_boot=2000, seed=1)["score"]
    assert again == out                                 # seeded


def test_paired_bootstrap_no_difference_gives_ci_around_zero():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 300)
    tuned = base + rng.normal(0, 0.1, 300)
    lo, hi = ev.paired_bootstrap([ev.mean_spec("s", base, tuned)], n_boot=1000, seed=2)["s"]["delta_ci"]
    assert lo < 0 < hi


def test_ratio_spec_bootstraps_token_weighted_nll():
    rng = np.random.default_rng(5)
    ntok = rng.integers(5, 50, 300).astype(float)
    base_nll = ntok * rng.normal(2.0, 0.2, 300)
    tuned_nll = ntok * rng.normal(1.5, 0.2, 300)
    m = ev.paired_bootstrap([ev.ratio_spec("nll", base_nll, ntok, tuned_nll, ntok)], n_boot=1000, seed=0)["nll"]
    assert m["base"] == pytest.approx(base_nll.sum() / ntok.sum())
    lo, hi = m["delta_ci"]
    assert lo < -0.5 + 0.05 and hi > -0.5 - 0.05 and hi < 0          # true difference -0.5, clearly lower
    assert m["p_not_better"] == 0.0                                  # lower is better for NLL
