"""Issue 21's batch measurement: stage 03 in batch mode (generation and judge) against the loopback files+batches
server (tests/support/fake_batch_server.py, driven by the real groq client), the process killed (SIGKILL, as a
dying kernel) in the middle, then run again: how many requests were submitted twice, how many pages were lost.

    python -m benchmarks.batch_resume [--pages 200] [--trials 12] [--seed 0] [--json out.json]

Trials, each with a fresh data_dir and server:
- `waiting`: killed while the generation batch runs (its id saved);
- `create`: killed after batches.create reached the server but before its reply (the id never saved): the
  rerun must find the batch by its metadata name;
- `random`: killed at a random moment of a full run (uniform over the uninterrupted run's length), which lands
  in imports, upload, waiting, merging, the judge's batch...;
- `no-state` (the contrast: what the state files prevent): killed while waiting, then cache/batches deleted
  before the rerun.
After the rerun: duplicates = requests (generation + judge) submitted in more than one batch although their
first batch answered them; lost = pages selected minus pages with a cached reply, plus judge requests without a
cached verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from nbutils.io import read_json, read_jsonl, write_jsonl
from tests.support.fake_batch_server import FakeBatchServer

from .common import REPO as ROOT

KEY = "gsk_bench_not_a_real_key"
CHILD = """
import json, sys
from nbutils.generate import GenerateConfig, run
run(GenerateConfig.from_params(**json.loads(sys.argv[1])))
"""


def make_pages(data_dir: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    vocab = [f"term{i}" for i in range(5000)]
    write_jsonl(data_dir / "pages.jsonl", [
        {"paper_id": f"2405.{i // 10:05d}v1", "page": i % 10 + 1, "chunk": 0,
         "text": " ".join(rng.choice(vocab) for _ in range(80))} for i in range(n)])


def params(data_dir: Path, srv: FakeBatchServer) -> dict:
    return dict(profile="full", data_dir=str(data_dir), base_url=srv.url, batch=True, batch_poll_s=0.05, rpm=0,
                tpm=0, judge=True, max_attempts=3)


def child(p: dict) -> subprocess.Popen:
    env = dict(os.environ, GROQ_API_KEY=KEY, PYTHONPATH=str(ROOT))
    env.pop("GROQ_BASE_URL", None)
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(p)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def states(data_dir: Path) -> list[dict]:
    return [read_json(f) for f in (data_dir / "cache" / "batches").glob("generate-*.json")]


def kill_when(proc: subprocess.Popen, ready, timeout_s: float = 300) -> float:
    """SIGKILL `proc` once `ready()`; -1 when it finished first."""
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                return -1.0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError("the kill moment never came")
            time.sleep(0.01)
        return time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


def trial(kind: str, n_pages: int, seed: int, full_s: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="batch_resume_"))
    try:
        make_pages(tmp, n_pages, seed)
        plans = [{"polls": 4}]
        with FakeBatchServer(plans=plans, default_plan={"polls": 4},
                             create_delay_s=3.0 if kind == "create" else 0.0) as srv:
            proc = child(params(tmp, srv))
            if kind in ("waiting", "no-state"):
                killed_at = kill_when(proc, lambda: srv.status_checks >= 2 and any(s["batch_id"] for s in states(tmp)))
            elif kind == "create":
                killed_at = kill_when(proc, lambda: len(srv.submissions) >= 1)
            else:
                moment = random.Random(seed).uniform(0.0, full_s)
                t0 = time.monotonic()
                killed_at = kill_when(proc, lambda: time.monotonic() - t0 >= moment)
            srv.create_delay_s = 0.0
            if kind == "no-state":
                shutil.rmtree(tmp / "cache" / "batches")
            rerun = child(params(tmp, srv))
            try:
                rerun.wait(timeout=300)
            finally:
                if rerun.poll() is None:
                    rerun.kill()
            if rerun.returncode != 0:
                raise RuntimeError(rerun.stderr.read().decode()[-3000:])
            report = read_json(tmp / "generate_report.json")
            counts = Counter(c for s in srv.submissions for c in s["custom_ids"])
            gen_keys = {r["key"] for r in read_jsonl(tmp / "cache" / "generate_replies.jsonl")}
            judge_keys = {r["key"] for r in read_jsonl(tmp / "cache" / "judge_verdicts.jsonl")}
            judge_wanted = report["judge"]["requests"]
            return {"kind": kind, "pages": report["pages_selected"], "killed_after_s": round(killed_at, 2),
                    "submissions": len(srv.submissions), "requests_submitted": sum(counts.values()),
                    "duplicates": sum(c - 1 for c in counts.values() if c > 1),
                    "lost_pages": report["pages_selected"] - len(gen_keys),
                    "lost_judge": judge_wanted - len(judge_keys),
                    "failed_after_rerun": len(report["pages_failed"]) + len(report["judge"]["failed"]),
                    "resumed": (report["batch"] or {}).get("batches_resumed", 0),
                    "judge_resumed": (report["judge"].get("batch") or {}).get("batches_resumed", 0)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def full_run_s(n_pages: int, seed: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="batch_full_"))
    try:
        make_pages(tmp, n_pages, seed)
        with FakeBatchServer(default_plan={"polls": 4}) as srv:
            t0 = time.monotonic()
            proc = child(params(tmp, srv))
            proc.wait(timeout=300)
            return time.monotonic() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--trials", type=int, default=12, help="random-moment kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    full_s = full_run_s(a.pages, a.seed)
    print(f"uninterrupted run: {full_s:.1f} s for {a.pages} pages (generation + judge batches)")
    rows = [trial("waiting", a.pages, a.seed, full_s), trial("create", a.pages, a.seed, full_s)]
    rows += [trial("random", a.pages, a.seed + i, full_s) for i in range(a.trials)]
    rows.append(trial("no-state", a.pages, a.seed, full_s))
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    safe = [r for r in rows if r["kind"] != "no-state"]
    print(f"with state files: {len(safe)} killed runs, duplicates {sum(r['duplicates'] for r in safe)}, lost pages "
          f"{sum(r['lost_pages'] for r in safe)}, lost judge requests {sum(r['lost_judge'] for r in safe)}")
    print(json.dumps(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"pages": a.pages, "uninterrupted_run_s": round(full_s, 1), "rows": rows},
                                           indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
