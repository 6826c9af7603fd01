"""Everything under reports/: the metrics table, best and worst examples, report.md, the two plots, and
metrics.json / predictions.jsonl (each written once)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from nbutils.io import atomic_write_text, read_jsonl, write_json, write_jsonl

from .harness import harness_markdown
from .metrics import METRIC_LABELS, ROUGE_TYPES


def verdict(m: dict) -> str:
    """'yes' / 'no' when the CI of tuned − base excludes 0, else 'not shown (...)'; descriptive metrics say so."""
    lo, hi = m["delta_ci"]
    sure = (lo > 0 or hi < 0)
    if m["higher_is_better"] is None:
        return "(descriptive)" if sure else "(descriptive; CI includes 0)"
    if m["delta"] == 0:
        return "not shown (no difference)"
    better = m["delta"] > 0 if m["higher_is_better"] else m["delta"] < 0
    return ("yes" if better else "no") if sure else \
        f"not shown (CI includes 0; point estimate {'better' if better else 'worse'})"


def metrics_table(metrics: dict) -> str:
    lines = ["| metric | base | tuned | tuned − base | 95% CI of the difference | tuned better? |",
             "|---|---:|---:|---:|---|---|"]
    for name, m in metrics.items():
        lo, hi = m["delta_ci"]
        lines.append(f"| {METRIC_LABELS.get(name, name)} | {m['base']:.4g} | {m['tuned']:.4g} | {m['delta']:+.4g} | "
                     f"[{lo:+.4g}, {hi:+.4g}] | {verdict(m)} |")
    return "\n".join(lines)


def _example_md(e: dict) -> str:
    """One example as Markdown. Every text from the dataset or a model is HTML-escaped: a notebook renders this
    as trusted output, and an instruction holding <script> or <img onerror=...> must show as text, not run."""
    def q(s: str, limit: int = 600) -> str:
        s = s if len(s) <= limit else s[:limit] + " …"
        return "\n".join("> " + html.escape(line) for line in (s or "(empty)").splitlines() or ["(empty)"])

    sb, st = e["scores"]["base"], e["scores"]["tuned"]
    paper = f", paper {html.escape(str(e['paper_id']))}" if e["paper_id"] else ""
    return (f"**Instruction** (row {e['id']}{paper}): {html.escape(str(e['instruction']))}\n\n"
            + (f"**Input:**\n{q(e['input'], 400)}\n\n" if e["input"] else "")
            + f"**Reference:**\n{q(e['reference'])}\n\n"
            f"**Base** (ROUGE-L {sb['rougeL']:.3f}):\n{q(e['base'])}\n\n"
            f"**Tuned** (ROUGE-L {st['rougeL']:.3f}):\n{q(e['tuned'])}\n")


def examples_markdown(per_example: list[dict], n_show: int = 3) -> str:
    """The n largest ROUGE-L gains and losses of the tuned model, as Markdown."""
    ranked = sorted(per_example, key=lambda e: (e["delta_rougeL"], e["id"]))
    return "\n\n".join(["## Largest gains of the tuned model (ROUGE-L)\n",
                         *[_example_md(e) for e in reversed(ranked[-n_show:])],
                         "## Largest losses of the tuned model (ROUGE-L)\n",
                         *[_example_md(e) for e in ranked[:n_show]]])


def show_examples(reports_dir: str | Path, n_show: int = 3) -> str:
    """examples_markdown of the predictions.jsonl in `reports_dir` (for the notebook)."""
    return examples_markdown(list(read_jsonl(Path(reports_dir) / "predictions.jsonl")), n_show)


def render_report(result: dict, per_example: list[dict], n_show: int = 3) -> str:
    g = result["generation"]
    how = "greedy" if not g["do_sample"] else f"sampled (T={g['temperature']}, top_p={g['top_p']}, seed={g['seed']})"
    eng = g.get("engine") or {}
    how += f" ({eng['path']} engine{', compiled' if eng.get('compiled') else ''})" if eng else ""
    b = result["bootstrap"]
    parts = [
        "# 05 evaluate: base vs tuned",
        f"{result['n_examples']} held-out examples ({result['split']} split), prompt template `{result['template']}`, "
        f"{how} decoding, max_new_tokens={g['max_new_tokens']}. "
        f"Paired bootstrap ({b['n']} resamples, seed {b['seed']}) "
        f"{int(b['confidence'] * 100)}% percentile intervals. BLEU is corpus BLEU (sacrebleu); reference NLL is the "
        "mean negative log-likelihood per token of the reference answer given the prompt (lower is better).",
        metrics_table(result["metrics"]),
        *([f"*Only {result['n_examples']} examples: percentile bootstrap intervals are too narrow for samples this "
           "small; read them as indicative. Evaluate more examples (max_examples=0: the whole split) before drawing "
           "conclusions.*"] if result["n_examples"] < 30 else []),
        *([harness_markdown(result["harness"])] if result.get("harness") else []),
        "![base vs tuned](metrics_ci.png)\n\n![per-example differences](deltas_hist.png)",
        examples_markdown(per_example, n_show),
    ]
    return "\n\n".join(parts) + "\n"


def plot_metrics(metrics: dict, path: str | Path):
    """Base vs tuned bars with bootstrap CI whiskers: overlap scores (0..1, BLEU/100) and reference NLL."""
    import matplotlib.pyplot as plt

    from nbutils.plots import save

    left = [("rouge1", 1.0), ("rouge2", 1.0), ("rougeL", 1.0), ("bleu", 0.01)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [4, 1.3]})
    for ax, items in ((ax1, left), (ax2, [("ref_nll", 1.0)])):
        x = np.arange(len(items))
        for off, v, color in ((-0.2, "base", "#8C8C8C"), (0.2, "tuned", "#4C72B0")):
            vals = np.array([metrics[k][v] * s for k, s in items])
            ci = np.array([[metrics[k][v + "_ci"][0] * s, metrics[k][v + "_ci"][1] * s] for k, s in items])
            err = np.abs(np.stack([vals - ci[:, 0], ci[:, 1] - vals]))
            ax.bar(x + off, vals, 0.4, yerr=err, capsize=4, color=color, label=v)
        ax.set_xticks(x, ["BLEU/100" if k == "bleu" else METRIC_LABELS[k].split(" (")[0].replace(" F1", "")
                          for k, _ in items])
    ax1.set_ylabel("score (higher is better)")
    ax2.set_ylabel("nats/token (lower is better)")
    ax1.legend()
    fig.suptitle("base vs tuned, 95% bootstrap CIs")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def plot_deltas(per_example: list[dict], path: str | Path):
    """Histograms of per-example tuned − base for ROUGE-1/2/L and sentence BLEU."""
    import matplotlib.pyplot as plt

    from nbutils.plots import save

    keys = list(ROUGE_TYPES) + ["bleu"]
    fig, axes = plt.subplots(1, len(keys), figsize=(12, 3), sharey=True)
    for ax, k in zip(axes, keys):
        d = [e["scores"]["tuned"][k] - e["scores"]["base"][k] for e in per_example]
        ax.hist(d, bins=min(30, max(5, len(d) // 3)), color="#4C72B0", edgecolor="white")
        ax.axvline(0, color="black", lw=0.8)
        ax.axvline(float(np.mean(d)), color="#C44E52", lw=1.2, ls="--")
        ax.set_title(("sentence BLEU" if k == "bleu" else METRIC_LABELS[k]) + ": tuned − base", fontsize=9)
    axes[0].set_ylabel("examples")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path



def write_reports(reports_dir: str | Path, result: dict, per_example: list[dict], n_show: int = 3) -> Path:
    """predictions.jsonl, the plots, report.md and metrics.json (last: its presence means the rest is there)."""
    reports = Path(reports_dir)
    write_jsonl(reports / "predictions.jsonl", per_example)
    plot_metrics(result["metrics"], reports / "metrics_ci.png")
    plot_deltas(per_example, reports / "deltas_hist.png")
    atomic_write_text(reports / "report.md", render_report(result, per_example, n_show))
    write_json(reports / "metrics.json", result)
    return reports
