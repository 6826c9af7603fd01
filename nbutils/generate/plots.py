"""What the notebook shows besides the summary: a few triples, drop reasons, field lengths."""
from __future__ import annotations

import random
from pathlib import Path

from ..io import read_jsonl
from .config import GenerateConfig
from .result import GenerateResult


def load_triples(cfg: GenerateConfig) -> list[dict]:
    return list(read_jsonl(cfg.triples_path))


def show_examples(cfg: GenerateConfig, n: int = 3, seed: int = 0, width: int = 300) -> None:
    """Print `n` random kept triples (fields cut to `width` characters)."""
    rows = load_triples(cfg)
    for t in random.Random(seed).sample(rows, min(n, len(rows))):
        cut = lambda s: s if len(s) <= width else s[:width] + "…"  # noqa: E731
        print(f"--- {t['paper_id']} p{t['page']}\nInstruction: {cut(t['instruction'])}\n"
              f"Input: {cut(t['input'])}\nOutput: {cut(t['output'])}\n")


def plot_drop_reasons(result: GenerateResult, path: str | Path | None = None):
    from ..plots import bar_counts

    counts = {**{f"reply: {k}": v for k, v in result.replies_without_triples.items()},
              **{f"triple: {k}": v for k, v in result.drops.items()}}
    return bar_counts(counts or {"nothing dropped": 0}, "Replies without triples and dropped triples", path)


def plot_field_lengths(cfg: GenerateConfig, path_prefix: str | Path | None = None) -> list:
    """One histogram of character lengths per field of the kept triples."""
    from ..plots import histogram

    rows = load_triples(cfg)
    figs = []
    for f in ("instruction", "input", "output"):
        path = f"{path_prefix}_{f}.png" if path_prefix else None
        figs.append(histogram([len(r[f]) for r in rows], f"{f} length ({len(rows)} triples)", "characters",
                              path=path))
    return figs


def load_dropped(cfg: GenerateConfig) -> list[dict]:
    path = Path(cfg.dropped_path)
    return list(read_jsonl(path)) if path.exists() else []


def plot_scores(cfg: GenerateConfig, path_prefix: str | Path | None = None) -> list:
    """Histograms of the grounding score (no LLM) and the judge's support and clarity, over every triple
    judged (kept and dropped), so a threshold can be chosen by eye."""
    from ..plots import histogram

    rows = load_triples(cfg) + load_dropped(cfg)
    figs = []
    grounding = [r["grounding"] for r in rows if r.get("grounding") is not None]
    if grounding:
        figs.append(histogram(grounding, f"grounding score ({len(grounding)} triples)", "share of the Output's "
                              "content on its page", bins=20,
                              path=f"{path_prefix}_grounding.png" if path_prefix else None))
    for key, what in (("judge_support", "support by the page"), ("judge_clarity", "instruction clarity")):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            figs.append(histogram(vals, f"judge: {what} ({len(vals)} triples judged)", "score (1-5)", bins=5,
                                  path=f"{path_prefix}_{key}.png" if path_prefix else None))
    both = [(r["grounding"], r["judge_support"]) for r in rows
            if r.get("grounding") is not None and r.get("judge_support") is not None]
    if both:
        figs.append(grounding_vs_support(both, f"{path_prefix}_grounding_vs_support.png" if path_prefix else None))
    return figs


def grounding_vs_support(points: list[tuple[float, int]], path: str | Path | None = None):
    """The free score beside the judge's: each judged triple's grounding (x) and support (y, jittered)."""
    from ..plots import plt, save

    rng = random.Random(0)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([g for g, _ in points], [s + rng.uniform(-0.15, 0.15) for _, s in points], s=10, alpha=0.5,
               color="#4C72B0")
    ax.set_xlabel("grounding score (no LLM)")
    ax.set_ylabel("judge: support (1-5)")
    ax.set_yticks([1, 2, 3, 4, 5])
    ax.set_title(f"grounding beside the judge ({len(points)} triples)")
    fig.tight_layout()
    return save(fig, path)


def judge_cost(result: GenerateResult) -> str:
    """The judge's calls, tokens and cost beside generation's (this run and the whole dataset)."""
    j = result.judge
    if not j or not j.get("enabled"):
        return "judge: off"
    price = "" if j["price_known"] else " (judge model not in the price table: $0 shown)"
    tokens = result.run_prompt_tokens + result.run_completion_tokens + j["prompt_tokens"] + j["completion_tokens"]
    return "\n".join([
        f"{'':12}{'calls':>8}{'tokens in':>12}{'tokens out':>12}{'USD':>10}",
        f"{'generate':12}{result.calls:>8}{result.run_prompt_tokens:>12}{result.run_completion_tokens:>12}"
        f"{result.run_cost_usd:>10.4f}",
        f"{'judge':12}{j['calls']:>8}{j['prompt_tokens']:>12}{j['completion_tokens']:>12}{j['cost_usd']:>10.4f}",
        f"whole dataset: generation ~${result.dataset_cost_usd:.4f}, judge ~${j['dataset_cost_usd']:.4f}{price}",
        f"per kept triple this run: {(result.calls + j['calls']) / max(1, result.triples_kept):.2f} calls, "
        f"{tokens / max(1, result.triples_kept):.0f} tokens",
    ])


DROPPED_COLUMNS = ("drop_reason", "grounding", "judge_support", "judge_clarity", "judge_claim", "judge_reason",
                   "instruction", "output", "paper_id", "page")


def dropped_table(cfg: GenerateConfig, n: int = 20, reason: str | None = None, width: int = 200):
    """The first `n` dropped triples (of one `reason`, or all) with their scores and the judge's reasons, as an
    HTML table whose text is escaped (a triple can hold markup); plain text where IPython is missing."""
    import html

    rows = [r for r in load_dropped(cfg) if reason is None or r.get("drop_reason") == reason][:n]
    cut = lambda v: ("" if v is None else str(v))[:width]  # noqa: E731
    try:
        from IPython.display import HTML
    except ImportError:
        return "\n".join(" | ".join(cut(r.get(c)) for c in DROPPED_COLUMNS) for r in rows) or "nothing dropped"
    if not rows:
        return HTML("<p>nothing dropped</p>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in DROPPED_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(cut(r.get(c)))}</td>"
                                    for c in DROPPED_COLUMNS) + "</tr>" for r in rows)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
