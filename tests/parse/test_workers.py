"""nbutils.parse.workers: a file past the time limit is killed and the others still parse, a memory bomb is
stopped by the memory limit, and kill -9 of the main process leaves no parse worker behind."""
from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from nbutils.parse import run_pool
from tests.support.pdfs import make_paper_pdf, options, raw_pdf


# ---------------------------------------------------------------- bad files
def slow_pdf(tag: int = 0) -> bytes:
    """One page with ~1.5M text operators: seconds of work for any parser (`tag` makes the bytes differ)."""
    return raw_pdf(b"BT /F1 12 Tf 72 700 Td (%d) Tj " % tag + b"(abc) Tj 1 0 Td " * 1_500_000 + b"ET")


def test_a_file_past_the_time_limit_is_killed_and_the_others_still_parse(tmp_path):
    (tmp_path / "slow.pdf").write_bytes(slow_pdf())
    good = make_paper_pdf(tmp_path / "good.pdf")
    results = dict(run_pool([str(tmp_path / "slow.pdf"), str(good)], options(), workers=1, timeout_s=0.5))
    slow = results[str(tmp_path / "slow.pdf")]
    assert slow["status"] == "skipped" and slow["reason"] == "timeout" and "0.5 s" in slow["detail"]
    assert results[str(good)]["status"] == "ok"


def test_a_memory_bomb_is_stopped_by_the_memory_limit(tmp_path):
    comp = zlib.compressobj(1)
    block = b" " * (1 << 24)
    stream = b"".join([comp.compress(b"BT /F1 12 Tf 72 700 Td (hi) Tj ET\n")] +
                      [comp.compress(block) for _ in range(12)] + [comp.flush()])  # 200 MB inflated
    (tmp_path / "bomb.pdf").write_bytes(raw_pdf(stream=stream))
    good = make_paper_pdf(tmp_path / "good.pdf")
    for loader in ("pypdfium2", "pypdf"):
        results = dict(run_pool([str(tmp_path / "bomb.pdf"), str(good)], options(loader=loader, max_memory_mb=64),
                                workers=2, timeout_s=60))
        bomb = results[str(tmp_path / "bomb.pdf")]
        assert bomb["status"] == "skipped", loader
        assert bomb["reason"] in ("out_of_memory", "corrupt") and ("memory" in bomb["detail"].lower()
                                                                  or "limit" in bomb["detail"].lower()), bomb
        assert results[str(good)]["status"] == "ok"


# ---------------------------------------------------------------- hostile folders
KILL_PARSE = """
import sys
from nbutils.parse import ParseConfig, run
run(ParseConfig.from_params(data_dir=sys.argv[1], workers=2, timeout_s=600, loader="pypdf"), progress=False)
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_kill_9_of_the_main_process_leaves_no_parse_worker(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from nbutils.io import PROJECT_ROOT

    d = tmp_path / "pdfs"
    d.mkdir()
    for i in range(3):
        (d / f"slow{i}.pdf").write_bytes(slow_pdf(i))
    proc = subprocess.Popen([sys.executable, "-c", KILL_PARSE, str(tmp_path)], cwd=PROJECT_ROOT,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.monotonic() + 60, []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = _children(proc.pid)
            time.sleep(0.1)
        assert len(workers) >= 2, "the parse workers never started"
        time.sleep(0.5)                      # they are busy on the slow files now
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a parse worker outlived its killed parent"
    finally:
        for w in workers if "workers" in dir() else []:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
