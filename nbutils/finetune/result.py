"""What stage 04 hands back: the training log (written to adapter/train_log.json), its summary numbers, the loss
plot, and FinetuneResult, which shows them in the notebook."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..result import StageResult
from .data import describe_truncation

TRAIN_LOG = "train_log.json"
LOSS_PNG = "loss.png"


def summarise(log: dict) -> dict:
    """First/last train loss, eval loss before/after, mean tokens/s, peak memory, truncated and dropped rows."""
    evals = [e["eval_loss"] for e in log["log"] if "eval_loss" in e]
    losses = [e["loss"] for e in log["log"] if "loss" in e]
    tps = [e["tokens_per_s"] for e in log["log"] if e.get("tokens_per_s")]
    mem = [e.get("peak_gpu_mem_gib", e.get("peak_rss_gib")) for e in log["log"]]
    return {"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "eval_loss_start": evals[0] if evals else None, "eval_loss_end": evals[-1] if evals else None,
            "mean_tokens_per_s": round(sum(tps) / len(tps), 1) if tps else None,
            "peak_memory_gib": max((m for m in mem if m is not None), default=None),
            "truncated_rows": sum(r["truncated"] for r in log["truncation"]),
            "dropped_rows": sum(r["answer_lost"] for r in log["truncation"])}


def plot_loss(log: dict, path: str | Path) -> Path:
    """Training and eval loss against the optimizer step, saved to `path` (the notebook shows the PNG)."""
    from ..plots import plt, save

    tr = [(e["step"], e["loss"]) for e in log["log"] if "loss" in e]
    ev = [(e["step"], e["eval_loss"]) for e in log["log"] if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if tr:
        ax.plot(*zip(*tr), marker=".", label="train loss")
    if ev:
        ax.plot(*zip(*ev), marker="o", label="eval loss (test split)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(f"fine-tuning {Path(str(log.get('base_model', ''))).name}")
    ax.legend()
    fig.tight_layout()
    plt.close(save(fig, path))
    return Path(path)


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


@dataclass
class FinetuneResult(StageResult):
    """The run's train_log.json (`log`) and where the adapter is."""

    log: dict
    adapter_dir: str

    @property
    def stats(self) -> dict:
        """train_log.json's "summary": losses, tokens/s, peak memory, truncated/dropped rows."""
        return self.log["summary"]

    @property
    def loss_plot(self) -> str | None:
        path = Path(self.adapter_dir) / LOSS_PNG
        return str(path) if path.exists() else None

    @property
    def truncation(self) -> list[dict]:
        return self.log["truncation"]

    def truncation_text(self) -> str:
        """One line per split: rows, lengths, how many max_length truncated or dropped."""
        return "\n".join(describe_truncation(rep) for rep in self.truncation)

    def summary(self) -> str:
        s, log = self.stats, self.log
        resumed = f", resumed from {Path(log['resumed_from']).name}" if log.get("resumed_from") else ""
        aside = f" Earlier checkpoints not continued: {log['checkpoints_set_aside']}." \
            if log.get("checkpoints_set_aside") else ""
        mem = "GPU" if any("peak_gpu_mem_gib" in e for e in log["log"]) else "RSS"
        return (f"Fine-tuned {Path(str(log['base_model'])).name} for {log['global_step']} steps{resumed} "
                f"({log.get('train_runtime_s', 'n/a')} s training): train loss {_num(s['first_loss'])} -> "
                f"{_num(s['last_loss'])}, eval loss {_num(s['eval_loss_start'])} -> {_num(s['eval_loss_end'])} "
                f"on {log['data']['n_eval']} held-out rows; {_num(s['mean_tokens_per_s'], ',.0f')} tokens/s, peak "
                f"{_num(s['peak_memory_gib'], '.2f')} GiB ({mem}); {s['truncated_rows']} rows truncated, "
                f"{s['dropped_rows']} dropped at max_length={log['config']['max_length']}. Adapter: "
                f"{self.adapter_dir}.{aside}")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per log step: step, loss or eval_loss, learning rate, tokens/s, peak memory."""
        return list(self.log["log"])
