"""Benchmark for 03_generate: the original's sequential loop vs the stage, against a loopback Groq-compatible
server with a fixed latency that enforces a requests-per-minute limit (429 + Retry-After beyond it).

    .venv/bin/python -m benchmarks.generate_speed                 # ~1.5 minutes
    .venv/bin/python -m benchmarks.generate_speed --pages 600 --rpm 1200 --baseline-pages 40
    python -m benchmarks.generate_speed --local data/models/base/SmolLM2-135M-Instruct --pages 128   # GPU, issue 14
                                                                  # (= python -m benchmarks.generate_local)

Measures, in one run: the baseline's seconds per page (the original's loop: one `groq` request after the
other, three regexes; run on a sample of `--baseline-pages` pages, since its time is linear in pages), the
stage's wall time for `--pages` pages, the share of the server's allowed rate the stage used (accepted
requests / what the token bucket allowed over the span they arrived in), 429s seen, and the calls a rerun
makes (must be 0).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from nbutils.generate import ORIGINAL_PROMPT, GenerateConfig, run
from nbutils.io import write_jsonl

from . import generate_local
from .common import REPO


def fake_llm_server():
    """The tests' fake Groq-compatible server (test code: it lives under tests/)."""
    try:
        from tests.support.fake_llm_server import FakeLLMServer
    except ImportError:   # tests/ not a package: its folder on the path
        sys.path.append(str(REPO / "tests"))
        from tests.support.fake_llm_server import FakeLLMServer
    return FakeLLMServer


def make_pages(data_dir: Path, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    rows = [{"paper_id": f"2406.{i // 10:05d}v1", "page": i % 10 + 1, "chunk": 0,
             "text": " ".join(rng.choice(vocab) for _ in range(300))} for i in range(n)]
    write_jsonl(data_dir / "pages.jsonl", rows)
    return rows


def original_loop(pages: list[dict], base_url: str, model: str) -> tuple[float, int]:
    """The original project's method: one request per page, in order, parsed with three regexes."""
    from groq import Groq

    client = Groq(base_url=base_url)
    triples = 0
    t0 = time.monotonic()
    for page in pages:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": ORIGINAL_PROMPT.replace("{text}", page["text"])}])
        content = reply.choices[0].message.content
        instructions = re.findall(r"Instruction: (.*?)\n", content)
        inputs = re.findall(r"Input: (.*?)\n", content)
        outputs = re.findall(r"Output: (.*?)(?:\n|$)", content)
        triples += len(list(zip(instructions, inputs, outputs)))
    return time.monotonic() - t0, triples


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--rpm", type=float, default=600, help="the server's requests/minute limit")
    ap.add_argument("--latency", type=float, default=1.5, help="server seconds per reply")
    ap.add_argument("--tpm-header", type=int, default=50_000_000, help="tokens/minute the server advertises")
    ap.add_argument("--baseline-pages", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0, help="0: enough to keep rate x latency requests in flight")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--local", metavar="MODEL_FOLDER", help="instead: the local backend (a GPU), HF generate "
                    "(engine=plain) vs the generation engine (engine=auto) on --pages demo-corpus pages, batch "
                    "--local-batch (benchmarks.generate_local)")
    ap.add_argument("--local-batch", type=int, default=64)
    args = ap.parse_args(argv)
    if args.local:
        generate_local.main(["--model", args.local, "--pages", str(args.pages), "--batch", str(args.local_batch)]
                            + (["--json", args.json] if args.json else []))
        return {}
    server = fake_llm_server()
    os.environ.setdefault("GROQ_API_KEY", "gsk_benchmark_not_a_real_key")
    os.environ.pop("GROQ_BASE_URL", None)
    workers = args.workers or math.ceil(args.rpm / 60 * args.latency * 1.5) + 2
    model = "llama-3.3-70b-versatile"
    out: dict = {"pages": args.pages, "rpm_limit": args.rpm, "latency_s": args.latency, "workers": workers}

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        data_dir = Path(tmp)
        pages = make_pages(data_dir, args.pages)

        with server(latency_s=args.latency, rpm=args.rpm) as srv:
            base_s, base_triples = original_loop(pages[: args.baseline_pages], srv.url, model)
        per_page = base_s / args.baseline_pages
        out.update(baseline_sample_pages=args.baseline_pages, baseline_sample_s=round(base_s, 2),
                   baseline_s_per_page=round(per_page, 3), baseline_projected_s=round(per_page * args.pages, 1),
                   baseline_triples_per_page=round(base_triples / args.baseline_pages, 2))
        print(f"original sequential loop: {args.baseline_pages} pages in {base_s:.1f} s "
              f"({per_page:.2f} s/page) -> {per_page * args.pages:.0f} s projected for {args.pages} pages", flush=True)

        # the server advertises (x-ratelimit-limit-tokens) a tokens/minute limit that does not bind, so the
        # requests/minute limit is what is measured (the limiter adopts whatever the header says)
        with server(latency_s=args.latency, rpm=args.rpm, tpm_header=args.tpm_header) as srv:
            cfg = GenerateConfig.from_params(profile="full", data_dir=str(data_dir), base_url=srv.url, model=model,
                                             rpm=args.rpm, tpm=0, workers=workers)
            t0 = time.monotonic()
            res = run(cfg)
            ours_s = time.monotonic() - t0
            util = srv.utilisation()
            n429, n200 = srv.count(429), srv.count(200)
            ts = srv.accepted_times()
            achieved_rpm = (len(ts) - 1) / (ts[-1] - ts[0]) * 60 if len(ts) > 1 else 0.0
            calls_before = srv.count()
            t1 = time.monotonic()
            res2 = run(cfg)
            rerun_s = time.monotonic() - t1
            rerun_calls = srv.count() - calls_before
        out.update(ours_s=round(ours_s, 2), speedup=round(per_page * args.pages / ours_s, 1),
                   rate_utilisation=round(util, 4), achieved_rpm=round(achieved_rpm, 1), accepted=n200,
                   rejected_429=n429, failed_pages=len(res.pages_failed), triples_kept=res.triples_kept,
                   triples_per_page=round(res.triples_per_page, 2), rerun_calls=rerun_calls,
                   rerun_s=round(rerun_s, 2), rerun_triples=res2.triples_kept)

    print(f"stage: {args.pages} pages in {ours_s:.1f} s with {workers} workers -> "
          f"{out['speedup']}x faster than the original loop")
    print(f"rate: {achieved_rpm:.0f} requests/min accepted of {args.rpm:.0f} allowed "
          f"(utilisation {util:.1%} of the token bucket's allowance), {n429} x 429, "
          f"{len(res.pages_failed)} failed pages")
    print(f"triples: {res.triples_kept} kept ({res.triples_per_page:.2f}/page); "
          f"rerun: {rerun_calls} calls, {rerun_s:.1f} s, {res2.triples_kept} triples")
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
