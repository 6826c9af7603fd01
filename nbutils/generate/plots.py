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
