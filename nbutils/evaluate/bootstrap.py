"""Paired bootstrap: base and tuned are scored on the SAME resamples of the examples, so the interval of their
difference reflects the difference, not how much the examples vary in difficulty."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class MetricSpec:
    """A metric as a function of per-example statistics summed over a (re)sample: value = fn(sums)."""

    name: str
    base: np.ndarray       # (n, k)
    tuned: np.ndarray      # (n, k)
    fn: Callable[[np.ndarray], np.ndarray]   # (B, k) sums -> (B,) values
    higher_is_better: bool | None = True     # None: descriptive (e.g. length), no better/worse verdict


def mean_spec(name: str, base: Sequence[float], tuned: Sequence[float],
              higher_is_better: bool | None = True) -> MetricSpec:
    b, t = np.asarray(base, float), np.asarray(tuned, float)
    ones = np.ones_like(b)
    return MetricSpec(name, np.stack([b, ones], 1), np.stack([t, ones], 1), lambda s: s[:, 0] / s[:, 1],
                      higher_is_better)


def ratio_spec(name: str, base_num, base_den, tuned_num, tuned_den, transform=None,
               higher_is_better: bool = False) -> MetricSpec:
    """sum(num)/sum(den) (e.g. token-weighted NLL), optionally transformed (exp -> perplexity)."""
    f = transform or (lambda x: x)
    return MetricSpec(name, np.stack([np.asarray(base_num, float), np.asarray(base_den, float)], 1),
                      np.stack([np.asarray(tuned_num, float), np.asarray(tuned_den, float)], 1),
                      lambda s: f(s[:, 0] / np.maximum(s[:, 1], 1e-12)), higher_is_better)


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicities of each example in each resample (multinomial = sampling with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def paired_bootstrap(specs: Sequence[MetricSpec], n_boot: int = 2000, seed: int = 42,
                     confidence: float = 0.95) -> dict[str, dict]:
    """Per metric: base, tuned, delta (tuned - base) on the full sample, percentile CIs of each and of the
    delta from the SAME resamples for both models (paired), and the share of resamples where tuned is not
    better (a one-sided bootstrap p-value)."""
    n = len(specs[0].base)
    w = bootstrap_weights(n, n_boot, seed)
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out = {}
    for s in specs:
        full_b = float(s.fn(s.base.sum(0, keepdims=True))[0])
        full_t = float(s.fn(s.tuned.sum(0, keepdims=True))[0])
        bb, bt = s.fn(w @ s.base), s.fn(w @ s.tuned)
        d = bt - bb
        worse = None if s.higher_is_better is None else (d <= 0) if s.higher_is_better else (d >= 0)
        out[s.name] = {
            "base": full_b, "tuned": full_t, "delta": full_t - full_b,
            "base_ci": [float(x) for x in np.percentile(bb, [lo_q, hi_q])],
            "tuned_ci": [float(x) for x in np.percentile(bt, [lo_q, hi_q])],
            "delta_ci": [float(x) for x in np.percentile(d, [lo_q, hi_q])],
            "p_not_better": None if worse is None else float(worse.mean()), "higher_is_better": s.higher_is_better,
        }
    return out

