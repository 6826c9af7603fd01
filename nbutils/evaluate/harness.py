""""Did it forget?": the same lm-evaluation-harness tasks on the base (adapter off) and the tuned model (adapter on).

The already-loaded PeftModel is handed to lm-eval's `HFLM(pretrained=model)` (one load for the whole of 05), and
`lm_eval.simple_evaluate` runs the tasks twice, once per variant. Standard tasks (arc_easy, hellaswag, mmlu_*) need
the Hugging Face hub for their data; tasks of your own go in `harness_include_path`, in lm-eval's YAML format over
local files (the tests do exactly that, offline).

Prompt template, consistently with training (lm-eval #1098, #3513): lm-eval's "chat template" hook renders every
prompt through the template 04 trained with. `chat`: the tokenizer's own chat template, with no system instruction
added (04 trained on a single user turn, so the template's default system prompt, if it has one, is there in both);
`alpaca`: the Alpaca text 04 trained with (instruction = the task's question, the answer after "### Response:").
Few-shot examples, when a task has any, are folded into that one user turn for both (what 04 trained on). Requests
are cached per variant and weights (lm-eval's CachingLM, a sqlite file under cache/eval/), so a killed run resumes.

The verdict compares base and tuned per task on its headline metric with lm-eval's own stderr: a task "dropped"
when tuned - base lies below the interval z * sqrt(se_base^2 + se_tuned^2) (conservative: the pairing of the
items is ignored).
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from statistics import NormalDist
from typing import Any

from nbutils.io import write_json
from nbutils.templates import ALPACA, alpaca_prompt

HEADLINE_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bleu")  # first present is the task's headline
HARNESS_DIR = "harness"  # reports/harness/{base,tuned}.json: lm-eval's own result files


class HarnessUnavailable(ImportError):
    """lm-eval is not installed but harness_tasks asks for it."""


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise HarnessUnavailable(
            "harness_tasks asks for lm-evaluation-harness, which is not installed: pip install 'lm-eval>=0.4.13' "
            "(in requirements.lock), or set harness_tasks=[] to skip the general-ability check") from e
    import lm_eval

    return lm_eval


def alpaca_from_messages(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """lm-eval's chat history (system/user/assistant turns) as the Alpaca prompt 04 trained with: system and user
    turns form the instruction; an unfinished assistant turn (a task's gen_prefix) continues after the response
    marker."""
    prefix = ""
    if not add_generation_prompt and messages and messages[-1]["role"] == "assistant":
        prefix, messages = messages[-1]["content"], messages[:-1]
    parts = []
    for m in messages:
        text = str(m.get("content") or "").strip()
        if not text:
            continue
        parts.append(f"Answer: {text}" if m["role"] == "assistant" else text)
    return alpaca_prompt("\n\n".join(parts)) + prefix


def make_lm(model, tok, template: str, batch_size: int):
    """lm-eval's HFLM over the already-loaded model, rendering prompts in `template` (see the module doc)."""
    from lm_eval.models.huggingface import HFLM

    class TemplatedHFLM(HFLM):
        def apply_chat_template(self, chat_history, add_generation_prompt=True):
            if template == ALPACA:
                return alpaca_from_messages(chat_history, add_generation_prompt)
            return super().apply_chat_template(chat_history, add_generation_prompt)

        def chat_template(self, chat_template=False):
            return f"nbutils:{template}" if template == ALPACA else super().chat_template(chat_template)

    tok_padding = tok.padding_side
    lm = TemplatedHFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    tok.padding_side = tok_padding
    return lm


def adapter_state(model, on: bool):
    """The tuned model (adapter on) as it is; the base with the adapter switched off."""
    if on or not hasattr(model, "disable_adapter"):
        return nullcontext()
    return model.disable_adapter()


def headline(metrics: dict[str, Any]) -> str | None:
    """The task's headline metric among lm-eval's 'name,filter' keys."""
    names = [k.split(",")[0] for k in metrics if "," in k and "_stderr" not in k]
    return next((m for m in HEADLINE_METRICS if m in names), names[0] if names else None)


def metric_value(results: dict, name: str) -> tuple[float | None, float | None]:
    """(value, stderr) of metric `name` under its first filter ('none' when present)."""
    keys = sorted((k for k in results if k.split(",")[0] == name), key=lambda k: not k.endswith(",none"))
    if not keys:
        return None, None
    value = results[keys[0]]
    stderr = results.get(keys[0].replace(",", "_stderr,", 1))
    as_float = lambda x: float(x) if isinstance(x, (int, float)) else None  # noqa: E731 ("N/A" stderr)
    return as_float(value), as_float(stderr)


def compare(base: dict, tuned: dict, confidence: float) -> dict[str, dict]:
    """Per task: headline metric, base/tuned with lm-eval's stderr, tuned - base and its interval, dropped?"""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    out = {}
    for task, b in base["results"].items():
        t = tuned["results"].get(task)
        name = headline(b)
        if t is None or name is None:
            continue
        (vb, sb), (vt, st) = metric_value(b, name), metric_value(t, name)
        if vb is None or vt is None:
            continue
        higher = (base.get("higher_is_better", {}).get(task) or {}).get(name, True)
        delta = vt - vb
        half = z * ((sb or 0.0) ** 2 + (st or 0.0) ** 2) ** 0.5
        worse = delta < -half if higher else delta > half
        better = delta > half if higher else delta < -half
        n = (base.get("n-samples", {}).get(task) or {}).get("effective")
        out[task] = {"metric": name, "n": n, "base": vb, "base_stderr": sb, "tuned": vt, "tuned_stderr": st,
                     "delta": delta, "delta_ci": [delta - half, delta + half], "higher_is_better": higher,
                     "dropped": bool(worse), "improved": bool(better)}
    return out


def verdict_line(tasks: dict[str, dict], confidence: float) -> str:
    level = int(round(confidence * 100))
    if not tasks:
        return "No harness task produced a comparable metric."
    dropped = [f"{t} ({m['metric']} {m['base']:.3f} -> {m['tuned']:.3f})" for t, m in tasks.items() if m["dropped"]]
    if dropped:
        return (f"General ability: the tuned model dropped beyond the {level}% interval on {', '.join(dropped)}; "
                f"{len(tasks) - len(dropped)} of {len(tasks)} task(s) within it or better.")
    return (f"General ability: no task dropped beyond its {level}% interval ({len(tasks)} task(s): "
            f"{', '.join(tasks)}).")


def evaluate_variant(lm, cfg, task_manager, apply_chat: bool, cache_db: Path | None) -> dict:
    """One simple_evaluate over cfg.harness_tasks (the sample-level log dropped)."""
    from lm_eval import simple_evaluate

    limit = cfg.harness_limit or None
    results = simple_evaluate(
        model=lm, tasks=list(cfg.harness_tasks), num_fewshot=cfg.harness_num_fewshot, limit=limit,
        use_cache=str(cache_db) if cache_db else None, bootstrap_iters=min(cfg.n_bootstrap, 10000),
        log_samples=False, apply_chat_template=apply_chat, fewshot_as_multiturn=False,
        task_manager=task_manager, random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed)
    if results is None:
        raise RuntimeError("lm-eval returned no results (not rank 0?)")
    results.pop("samples", None)
    return results


def prepare_harness(cfg):
    """lm-eval's TaskManager with cfg.harness_tasks checked (None when the list is empty): run before any answer
    is generated, so a missing package or a misspelt task stops 05 before its paid work."""
    if not cfg.harness_tasks:
        return None
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    include = cfg.harness_include_path
    if include and not Path(include).is_dir():
        raise FileNotFoundError(f"harness_include_path={include!r} is not a folder of lm-eval task YAMLs")
    task_manager = None
    if include:  # tasks all of your own: only that folder is indexed (lm-eval's thousands of YAMLs take ~10 s)
        own = TaskManager(include_path=str(include), include_defaults=False)
        task_manager = own if all(t in own.all_tasks for t in cfg.harness_tasks) else None
    task_manager = task_manager or TaskManager(include_path=str(include) if include else None)
    missing = [t for t in cfg.harness_tasks if t not in task_manager.all_tasks]
    if missing:
        raise ValueError(f"harness_tasks: lm-eval knows no task(s) {', '.join(map(repr, missing))}"
                         + (f" (nor does harness_include_path={include!r})" if include else
                            " (tasks of your own: harness_include_path=<folder of task YAMLs>)"))
    return task_manager


def run_harness(cfg, model, tok, template: str, cache_key: str, task_manager=None,
                verbose: bool = True) -> dict | None:
    """Base and tuned through lm-eval on cfg.harness_tasks; None when the list is empty. Writes lm-eval's result
    files to reports/harness/ and returns the comparison that metrics.json and report.md carry."""
    if not cfg.harness_tasks:
        return None
    t0 = time.time()
    task_manager = task_manager or prepare_harness(cfg)
    import lm_eval

    include = cfg.harness_include_path
    lm = make_lm(model, tok, template, cfg.harness_batch_size or cfg.batch_size)
    raw = {}
    for variant in ("base", "tuned"):
        if verbose:
            print(f"lm-eval: {variant} on {', '.join(cfg.harness_tasks)} (limit {cfg.harness_limit or 'none'})")
        cache_db = Path(cfg.cache_dir) / "eval" / f"harness-{variant}-{cache_key}" if cfg.resume else None
        with adapter_state(model, variant == "tuned"):
            raw[variant] = evaluate_variant(lm, cfg, task_manager, True, cache_db)
        write_json(Path(cfg.reports_dir) / HARNESS_DIR / f"{variant}.json",
                   json.loads(json.dumps(raw[variant], default=str)))
    tasks = compare(raw["base"], raw["tuned"], cfg.confidence)
    return {"tasks": tasks, "verdict": verdict_line(tasks, cfg.confidence), "task_list": list(cfg.harness_tasks),
            "limit": cfg.harness_limit, "num_fewshot": cfg.harness_num_fewshot, "template": template,
            "include_path": include, "confidence": cfg.confidence, "lm_eval_version": lm_eval.__version__,
            "seconds": round(time.time() - t0, 1)}


def harness_markdown(h: dict | None) -> str:
    """report.md's section: one row per task, lm-eval's stderr beside each value, the verdict line."""
    if not h:
        return ""
    level = int(round(h["confidence"] * 100))
    lines = ["## General ability (lm-evaluation-harness)",
             f"lm-eval {h['lm_eval_version']}, the same tasks on the base (adapter off) and the tuned model, prompts "
             f"in the training template `{h['template']}`, at most {h['limit'] or 'all'} examples per task. Values "
             f"± lm-eval's stderr; the interval of tuned − base is "
             f"±{NormalDist().inv_cdf(0.5 + h['confidence'] / 2):.2f}"
             " × √(se_base² + se_tuned²).",
             f"| task | metric | n | base | tuned | tuned − base | {level}% interval | dropped? |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    fmt = lambda v, s: f"{v:.4f} ± {s:.4f}" if s is not None else f"{v:.4f}"  # noqa: E731
    for task, m in h["tasks"].items():
        lo, hi = m["delta_ci"]
        lines.append(f"| {task} | {m['metric']} | {m['n'] if m['n'] is not None else ''} | "
                     f"{fmt(m['base'], m['base_stderr'])} | {fmt(m['tuned'], m['tuned_stderr'])} | {m['delta']:+.4f} "
                     f"| [{lo:+.4f}, {hi:+.4f}] | {'**yes**' if m['dropped'] else 'no'} |")
    return "\n\n".join([lines[0], lines[1], "\n".join(lines[2:]), f"**{h['verdict']}**"])
