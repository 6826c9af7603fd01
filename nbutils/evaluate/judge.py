"""Optional LLM-as-judge: pairwise, both answer orders, through the nbutils.llm backends; verdicts cached."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nbutils.io import sha256_text

from .answers import PredictionCache
from .bootstrap import mean_spec, paired_bootstrap

JUDGE_SYSTEM = ("You are a strict, impartial grader of answers to questions about research papers. Judge which "
                "answer is more correct, complete and faithful to the reference answer. Ignore answer order and "
                "length. Reply with exactly one word: A, B or TIE.")


def judge_messages(row: dict, reference: str, answer_a: str, answer_b: str) -> list[dict]:
    ctx = f"Context:\n{row['input']}\n\n" if str(row.get("input") or "").strip() else ""
    user = (f"Question:\n{row['instruction']}\n\n{ctx}Reference answer:\n{reference}\n\n"
            f"Answer A:\n{answer_a or '(empty)'}\n\nAnswer B:\n{answer_b or '(empty)'}\n\n"
            "Which answer is better? Reply A, B or TIE.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'TIE' from the judge's reply (first such word), None when it says none of them."""
    import re

    m = re.search(r"\b(TIE|A|B)\b", (text or "").upper())
    return m.group(1) if m else None


def judge_pairwise(rows, refs, base: Sequence[str], tuned: Sequence[str], backend, cache_path: str | Path | None,
                   workers: int = 4) -> list[dict]:
    """Per example, the judge sees (A=base, B=tuned) and (A=tuned, B=base). tuned_pref = mean over the orders
    answered of 1 (tuned preferred), 0.5 (tie), 0 (base preferred); None when neither order got a verdict.
    Verdicts are cached (fsync'd as they arrive), so a rerun pays only for the missing ones."""
    from tqdm.auto import tqdm

    from nbutils.llm import LLMError, iter_completions

    cache = PredictionCache(cache_path)
    who = f"{getattr(backend, 'name', '?')}/{getattr(backend, 'model', '?')}"
    jobs, keys = [], {}
    for i, r in enumerate(rows):
        for order, (a, b) in (("base_first", (base[i], tuned[i])), ("tuned_first", (tuned[i], base[i]))):
            msgs = judge_messages(r, refs[i], a, b)
            key = sha256_text(who, json.dumps(msgs))
            keys[(i, order)] = key
            if cache.get(key) is None:
                jobs.append(((i, order, key), msgs))
    failed = 0
    for (i, order, key), res in tqdm(iter_completions(backend, jobs, workers=workers, max_tokens=8, temperature=0.0),
                                     total=len(jobs), desc="judge", unit="call"):
        if isinstance(res, LLMError):
            failed += 1
            print(f"judge: example {rows[i]['id']} ({order}) failed: {res.describe()}")
            continue
        cache.add([{"key": key, "reply": res.text, "verdict": parse_verdict(res.text)}])
    if failed:
        print(f"judge: {failed} call(s) failed; rerun to retry only those")
    out = []
    for i in range(len(rows)):
        prefs, verdicts = [], {}
        for order in ("base_first", "tuned_first"):
            rec = cache.get(keys[(i, order)])
            v = rec["verdict"] if rec else None
            verdicts[order] = v
            if v is not None:
                tuned_letter = "B" if order == "base_first" else "A"
                prefs.append(0.5 if v == "TIE" else float(v == tuned_letter))
        consistent = len(prefs) == 2 and prefs[0] == prefs[1]
        out.append({"tuned_pref": float(np.mean(prefs)) if prefs else None, "verdicts": verdicts,
                    "consistent": consistent})
    return out


def judge_metrics(judged: list[dict], n_boot: int, seed: int, confidence: float) -> dict:
    """The judge's preference share of each model with a bootstrap CI (examples with a verdict), and how often
    its verdict survived swapping the answer order."""
    s = np.array([j["tuned_pref"] for j in judged if j["tuned_pref"] is not None], float)
    if not len(s):
        return {}
    m = paired_bootstrap([mean_spec("judge_preference", 1 - s, s)], n_boot, seed, confidence)
    m["judge_preference"]["n_judged"] = int(len(s))
    m["judge_preference"]["order_consistency"] = float(np.mean([j["consistent"] for j in judged
                                                                if j["tuned_pref"] is not None]))
    return m

