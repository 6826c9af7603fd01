"""What 05 evaluates: the frozen split's rows, and the prompt template 04 trained with."""
from __future__ import annotations

from pathlib import Path

from nbutils.io import read_json
from nbutils.templates import ALPACA

from .config import EvaluateConfig

TRAIN_LOG = "train_log.json"  # written into the adapter folder by 04 (nbutils.finetune.TRAIN_LOG)


def load_eval_examples(cfg: EvaluateConfig, verbose: bool = True) -> list[dict]:
    """The rows to evaluate: the frozen split's `cfg.split`, first `max_examples` (0: all); rows without an
    instruction or a reference answer are skipped with a message naming them."""
    from nbutils.splits import load_split

    dd = load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, verbose=verbose)
    if cfg.split not in dd:
        raise KeyError(f"split {cfg.split!r} not in {cfg.dataset_dir} (has {', '.join(dd)})")
    rows = []
    for i, r in enumerate(dd[cfg.split]):
        if not str(r.get("instruction") or "").strip() or not str(r.get("output") or "").strip():
            print(f"skipping {cfg.split} row {i} (paper {r.get('paper_id') or '?'}): empty "
                  f"{'instruction' if not str(r.get('instruction') or '').strip() else 'reference output'}")
            continue
        rows.append({"id": i, **{k: r.get(k, "") for k in ("instruction", "input", "output", "paper_id", "page")}})
        if cfg.max_examples and len(rows) >= cfg.max_examples:
            break
    if not rows:
        raise ValueError(f"nothing to evaluate: the {cfg.split!r} split of {cfg.dataset_dir} has no usable rows")
    if verbose:
        print(f"evaluating {len(rows)} {cfg.split} examples")
    return rows


def read_train_log(adapter_dir: str | Path) -> dict:
    """04's train_log.json in the adapter folder ({} when absent or unreadable)."""
    p = Path(adapter_dir) / TRAIN_LOG
    try:
        log = read_json(p) if p.exists() else {}
    except (OSError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}


def recorded_template(adapter_dir: str | Path) -> str | None:
    """The prompt template stage 04 trained with, if its log in the adapter folder says."""
    config = read_train_log(adapter_dir).get("config")
    template = config.get("template") if isinstance(config, dict) else None
    return template if isinstance(template, str) else None


def resolve_template(cfg: EvaluateConfig) -> str:
    recorded = recorded_template(cfg.adapter_dir)
    if cfg.template and recorded and cfg.template != recorded:
        print(f"warning: the adapter was trained with template {recorded!r} but template={cfg.template!r} "
              f"was asked for; using {cfg.template!r}")
    return cfg.template or recorded or ALPACA
