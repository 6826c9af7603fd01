"""What stage 05 returns: EvaluateResult (metrics.json's content with a summary and a table)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbutils.result import StageResult

from .metrics import METRIC_LABELS
from .report import verdict

HEADLINE = ("rougeL", "bleu", "ref_nll")  # the metrics summary() names


@dataclass
class EvaluateResult(StageResult):
    """What 05 found: `report` is metrics.json's content (metrics with CIs, configuration, runtime)."""

    report: dict[str, Any]
    reports_dir: str

    @property
    def metrics(self) -> dict[str, dict]:
        return self.report["metrics"]

    @property
    def runtime(self) -> dict[str, Any]:
        return self.report.get("runtime", {})

    def rows(self) -> list[dict[str, Any]]:
        """One row per metric: base, tuned, their difference with its CI, and whether tuned is better."""
        out = []
        for name, m in self.metrics.items():
            lo, hi = m["delta_ci"]
            out.append({"metric": METRIC_LABELS.get(name, name), "base": m["base"], "tuned": m["tuned"],
                        "delta": m["delta"], "delta_ci_low": lo, "delta_ci_high": hi,
                        "tuned_better": verdict(m)})
        return out

    def summary(self) -> str:
        r, level = self.report, int(round(self.report["bootstrap"]["confidence"] * 100))
        parts, verdicts = [], {"yes": [], "no": []}
        for name, m in self.metrics.items():
            lo, hi = m["delta_ci"]
            if name in HEADLINE:
                parts.append(f"{METRIC_LABELS[name]} {m['base']:.4g} -> {m['tuned']:.4g} "
                             f"({m['delta']:+.3g}, {level}% CI [{lo:+.3g}, {hi:+.3g}])")
            verdicts.get(verdict(m), []).append(METRIC_LABELS.get(name, name))
        better = ", ".join(verdicts["yes"]) or "none"
        worse = f"; worse on: {', '.join(verdicts['no'])}" if verdicts["no"] else ""
        seconds = self.runtime.get("seconds_total")
        harness = f" {r['harness']['verdict']}" if r.get("harness") else ""
        return (f"05 evaluate: {r['n_examples']} {r['split']} examples, template {r['template']!r}, "
                f"{'sampled' if r['generation']['do_sample'] else 'greedy'} decoding. " + "; ".join(parts)
                + f". Tuned better ({level}% CI excludes 0) on: {better}{worse}. Reports in {self.reports_dir}"
                + (f" ({seconds} s)." if seconds is not None else ".") + harness)
