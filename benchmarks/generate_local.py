"""03's local backend on a GPU (issue 14): LocalBackend(engine="plain") (HF generate, its path before the decoding
engine) vs LocalBackend(engine="auto") (the static compiled path), same demo-corpus pages (demo prompt, reply
prefix, repetition penalty 1.15, greedy), 03's batching: pages/s and whether the replies are identical. The
engine's first pass (compiling its step) is timed apart; its second pass is the steady state.

    python -m benchmarks.generate_local --model data/models/base/SmolLM2-135M-Instruct --pages 128 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .common import demo_windows, sync, write_json


def timed_pages(backend, convs, batch: int, max_tokens: int) -> tuple[list, float]:
    """Replies of `backend` to every conversation, `batch` per call as 03 sends them, and the wall seconds."""
    sync()
    t0 = time.perf_counter()
    out = []
    for k in range(0, len(convs), batch):
        out += backend.complete_batch(convs[k:k + batch], max_tokens=max_tokens)
    sync()
    return out, time.perf_counter() - t0


def run_local(folder: str, n: int, batch: int, max_tokens: int = 256) -> dict:
    """03's local backend before (engine="plain") and after (engine="auto"), same pages; figures and every reply."""
    from nbutils.generate import BUILTIN_PROMPTS
    from nbutils.llm import LocalBackend

    tpl = BUILTIN_PROMPTS["demo"]
    convs = [tpl.messages(w) for w in demo_windows(600, 300)[:n]]
    opts = dict(batch_size=batch, reply_prefix=tpl.reply_prefix, repetition_penalty=1.15)
    plain = LocalBackend(folder, engine="plain", **opts)
    plain.complete_batch(convs[:2], max_tokens=4)     # warm-up
    before, before_s = timed_pages(plain, convs, batch, max_tokens)
    del plain
    auto = LocalBackend(folder, engine="auto", **opts)
    _, first_s = timed_pages(auto, convs, batch, max_tokens)
    after, after_s = timed_pages(auto, convs, batch, max_tokens)
    same = sum(a.text == b.text for a, b in zip(after, before))
    out = {"pages": len(convs), "batch": batch, "max_tokens": max_tokens, "before_s": before_s,
           "after_first_pass_s": first_s, "after_s": after_s, "before_pages_per_s": len(convs) / before_s,
           "after_pages_per_s": len(convs) / after_s, "engine_compilations": auto.engine.compilations,
           "identical_replies": same / len(convs),
           "before_tokens": sum(c.completion_tokens for c in before),
           "after_tokens": sum(c.completion_tokens for c in after),
           "before_texts": [c.text for c in before], "after_texts": [c.text for c in after]}
    print(f"[real local] before {out['before_pages_per_s']:.2f} pages/s, after {out['after_pages_per_s']:.2f} pages/s "
          f"(first pass {first_s:.1f} s), identical {same}/{len(convs)}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the model folder (e.g. the provisioned SmolLM2)")
    ap.add_argument("--pages", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="pages per call, as 03 sends them")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--json", help="also write the figures (not the replies) here")
    a = ap.parse_args(argv)
    figures = {k: v for k, v in run_local(a.model, a.pages, a.batch, a.max_tokens).items() if "texts" not in k}
    print(json.dumps(figures, indent=2))
    if a.json:
        write_json(a.json, figures, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
